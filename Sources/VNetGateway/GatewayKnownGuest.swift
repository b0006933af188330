// A guest known before it speaks: when vnet opened the guest's TAP itself (`vnet slirp4netns`), it knows the
// TAP's MAC and the address the caller configures, so hostfwd can reach a namespace that has not sent a frame
// yet (libslirp would find it by ARP). The entry is an ordinary learned neighbour: the guest's own traffic
// overrides it.

import VNetWire

extension Gateway {
    public func knowGuest(_ address: IPv4Address, mac: MACAddress) {
        learnNeighbour(address, mac)
    }
}
