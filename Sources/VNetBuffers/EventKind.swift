// The one registry of event kinds: what an fd in any vnet loop is.
//
// Every fd a loop waits on carries a 64-bit tag: its kind in the top byte, an index (a flow, a port, a
// listener slot, a control client) in the low 32 bits, so dispatch is a switch with no lookup. Every kind of
// every mode is declared here and only here, so two kinds cannot share a number even when one loop serves
// them all (the gateway's flow sockets, the guest ports, the switch's links, the control socket...). The
// gateway's `FlowTag` and the loop (`EventLoop` in VNetHost) both build their tags from these kinds.

public enum EventKind: UInt8, CaseIterable, Sendable {
    // Gateway flow sockets (`FlowTag`): index = the flow's slot in its table.
    case udpFlow = 1, icmpFlow = 2, tcpFlow = 3
    // Owned by the loop itself.
    /// The signalfd (stop, reload, counters).
    case signal = 8
    /// An fd whose readability ends the loop (`vnet run`: QEMU's pidfd).
    case stopWatch = 9
    /// The eventfd of work posted from other threads (the library's command queue).
    case command = 10
    /// An fd a front end serves on the loop (`vnet slirp4netns`'s API socket): index = watcher slot.
    case watcher = 11
    // Ports (guests, peers). Index = the port's link slot.
    /// A stream listener of guests (unix or TCP): index = listener slot.
    case portListener = 16
    /// A port's own fd: a stream connection, a connector, a datagram socket or a TAP.
    case port = 17
    /// A datagram socket shared by many peers, one port each: index = hub slot.
    case datagramHub = 18
    /// The receiving socket of a multicast group: index = group slot.
    case multicastGroup = 19
    /// An fd of a transport with a protocol of its own (vhost-user, VXLAN): index = the port's slot << 16 | the
    /// transport's own token for the fd (VNetRuntime/PortTransport.swift).
    case transport = 20
    // Host forwards (hostfwd, port maps): index = forward slot.
    case forwardTCP = 24, forwardUDP = 25
    // Observability.
    case control = 32, controlClient = 33
    case metrics = 34, metricsClient = 35
    // Kernel NAT's services on the bridge.
    case dhcpSocket = 40, dnsSocket = 41, dnsUpstream = 42
    /// A TCP DNS client or its upstream connection: index = relay slot << 1 | side.
    case dnsRelay = 43

    /// The tag of an fd of this kind with `index` in its low 32 bits.
    @inline(__always)
    public func tag(_ index: Int = 0) -> UInt64 { UInt64(rawValue) << 56 | UInt64(UInt32(truncatingIfNeeded: index)) }

    /// The kind and index of a tag, or nil for a tag no loop makes.
    @inline(__always)
    public static func of(_ tag: UInt64) -> (kind: EventKind, index: Int)? {
        guard let k = EventKind(rawValue: UInt8(truncatingIfNeeded: tag >> 56)) else { return nil }
        return (k, Int(UInt32(truncatingIfNeeded: tag)))
    }
}
