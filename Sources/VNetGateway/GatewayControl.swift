// Read-only views of the gateway for the control plane (flows, leases), and the control actions that must
// reach into the flow tables: forgetting the UDP flows of a hostfwd listener that is being closed, and closing
// every flow when the guest behind the port is gone (`closeAllFlows`).
// Nothing here runs on the data path; these build arrays and may allocate.

import VNetBuffers
import VNetServices
import VNetWire

/// One NAT flow as `info usernet` shows it.
public struct FlowInfo: Sendable {
    public enum Proto: String, Sendable { case tcp = "TCP", udp = "UDP", icmp = "ICMP" }
    public var proto: Proto
    /// TCP: the connection state; UDP/ICMP: nil (they show seconds to expiry instead).
    public var state: String?
    /// Seconds until an idle UDP/ICMP flow expires.
    public var expiresIn: Int?
    public var guestAddress: IPAddress
    /// 0 for ICMP.
    public var guestPort: UInt16
    public var remoteAddress: IPAddress
    public var remotePort: UInt16
    /// The host socket (the runtime reads its kernel queues).
    public var hostHandle: Int32
    /// TCP: bytes sent to the guest and not yet acknowledged by it.
    public var unacknowledgedToGuest: Int
    /// The flow came in through a hostfwd listener.
    public var fromForward: Bool
}

/// One DHCP pool slot that has (or had) a client.
public struct LeaseInfo: Sendable {
    public var address: IPv4Address
    public var mac: MACAddress
    /// "bound", "offered" (held for a DISCOVER), "expired" or "declined".
    public var state: String
    /// Seconds until the lease (or the offer's hold) ends; 0 once it has.
    public var expiresIn: Int
}

extension Gateway {
    public func flows(now: Instant) -> [FlowInfo] {
        var out: [FlowInfo] = []
        func remaining(_ last: Instant, _ timeout: Instant.Duration) -> Int {
            let end = last + timeout
            return end > now ? Int((end - now).seconds) : 0
        }
        for i in tcpEngine.flows.activeIndices {
            guard let f = tcpEngine.flows[i] else { continue }
            let state: String
            switch f.state {
            case .connecting: state = "CONNECTING"
            case .synAckSent: state = "SYN_RCVD"
            case .synSent: state = "SYN_SENT"
            case .established:
                switch (f.guestFinReceived, f.hostEOF) {
                case (false, false): state = "ESTABLISHED"
                case (true, false): state = "CLOSE_WAIT"
                case (false, true): state = "FIN_WAIT"
                case (true, true): state = "LAST_ACK"
                }
            }
            out.append(FlowInfo(proto: .tcp, state: state, expiresIn: nil, guestAddress: f.key.guestAddress, guestPort: f.key.guestPort,
                                remoteAddress: f.key.destination, remotePort: f.key.destinationPort, hostHandle: f.handle,
                                unacknowledgedToGuest: Int(f.inFlight), fromForward: f.state == .synSent))
        }
        for i in udpEngine.flows.activeIndices {
            guard let f = udpEngine.flows[i] else { continue }
            let timeout = f.isDNS ? config.dnsIdleTimeout : config.udpIdleTimeout
            out.append(FlowInfo(proto: .udp, state: nil, expiresIn: remaining(f.lastActive, timeout), guestAddress: f.key.guestAddress,
                                guestPort: f.key.guestPort, remoteAddress: f.key.destination, remotePort: f.key.destinationPort,
                                hostHandle: f.handle, unacknowledgedToGuest: 0, fromForward: f.replyTo != nil))
        }
        for i in icmpEngine.flows.activeIndices {
            guard let f = icmpEngine.flows[i] else { continue }
            out.append(FlowInfo(proto: .icmp, state: nil, expiresIn: remaining(f.lastActive, config.icmpIdleTimeout),
                                guestAddress: f.key.guestAddress, guestPort: 0, remoteAddress: f.key.destination, remotePort: 0,
                                hostHandle: f.handle, unacknowledgedToGuest: 0, fromForward: false))
        }
        return out
    }

    public func leases(now: Instant) -> [LeaseInfo] {
        var out: [LeaseInfo] = []
        for (i, s) in dhcp.slots.enumerated() {
            guard let mac = s.mac else { continue }
            let left = s.expires > now ? Int((s.expires - now).seconds) : 0
            let state: String
            if mac == .zero { state = "declined" } else if left == 0 { state = "expired" } else { state = s.bound ? "bound" : "offered" }
            out.append(LeaseInfo(address: dhcp.address(ofSlot: i), mac: mac, state: state, expiresIn: left))
        }
        return out
    }

    /// Drops the UDP flows answering clients of the hostfwd listener `listener`, which the caller is about to
    /// close (they send through it, so they must not outlive it). Returns how many went.
    @discardableResult
    public func forgetForwardedUDP(listener: Int32) -> Int {
        var n = 0
        for i in udpEngine.flows.activeIndices {
            guard let f = udpEngine.flows[i], f.replyTo != nil, f.handle == listener else { continue }
            udpEngine.flows.remove(f.key)
            n += 1
        }
        return n
    }

    /// The guest is gone (its QEMU's stream connection closed, in the modes where vnet accepts connections):
    /// every NAT flow goes with it. TCP host sockets are reset (the host peer sees RST, as it would from a
    /// guest that rebooted), UDP and ICMP sockets closed, TFTP transfers ended. hostfwd listeners and DHCP
    /// leases stay: the next QEMU is served by the same rules and keeps its address. Returns how many flows
    /// were closed (each counted as `flows_closed_guest_gone`).
    @discardableResult
    public func closeAllFlows() -> Int {
        let n = closeFlows(owned: { _ in true })
        tftp?.closeAll()
        tcpEngine.ackList.removeAll(keepingCapacity: true)
        tcpEngine.queueBlocked.removeAll()
        tcpEngine.windowWatch.removeAll(keepingCapacity: true)
        return n
    }

    /// Some guests are gone (`vnet nat`/`switch`: the switch port they were learned on lost its peer): their NAT
    /// flows go as in `closeAllFlows`, the other guests' stay. TFTP transfers end by their own timeout. The lists
    /// of flows waiting for an ACK flush, queue room or window may still name a freed slot: each checks the
    /// flow it finds there.
    @discardableResult
    public func closeFlows(ofGuests macs: Set<MACAddress>) -> Int {
        guard !macs.isEmpty else { return 0 }
        return closeFlows(owned: { macs.contains($0) })
    }

    func closeFlows(owned isGone: (MACAddress) -> Bool) -> Int {
        var n = 0
        for i in tcpEngine.flows.activeIndices {
            guard let f = tcpEngine.flows[i], isGone(f.guestMAC) else { continue }
            host.tcpAbort(f.handle)
            forgetTCPFlow(f)
            n += 1
        }
        for i in udpEngine.flows.activeIndices {
            guard let f = udpEngine.flows[i], isGone(f.guestMAC) else { continue }
            if f.replyTo == nil { host.close(f.handle) }   // hostfwd flows share the forward's listener
            forgetUDPFlow(f)
            n += 1
        }
        for i in icmpEngine.flows.activeIndices {
            guard let f = icmpEngine.flows[i], isGone(f.guestMAC) else { continue }
            host.close(f.handle)
            icmpEngine.flows.remove(f.key)
            n += 1
        }
        for _ in 0 ..< n { counters.count(.flowsClosedGuestGone) }
        return n
    }
}
