// VNetServices: the gateway's own services (DHCP now; TFTP and DNS records later) as pure functions of
// (request, configuration, time) -> reply. No sockets, no clock reads.
//
// Theory of Operation: DHCP (RFC 2131)
// ------------------------------------
// The pool is a fixed array of `poolSize` slots starting at `poolStart` (QEMU: 10.0.2.15, 16 addresses).
// Each slot remembers the last MAC it served even after its lease expires, so a guest that reboots gets its
// old address back; an expired slot is handed to a *different* MAC only when no never-used slot is left
// (oldest expiry first). DISCOVER holds an address for `offerHold` so two clients are never offered the same
// one; REQUEST confirms it (ACK) or refuses it (NAK) when it is outside the pool or held by another MAC. A
// REQUEST naming another server's identifier is left alone: the client chose someone else. RELEASE ends the
// lease but keeps the MAC. The table has a fixed cap by construction: more MACs than slots get no offer,
// and the caller counts that. Replies carry subnet mask, router, DNS, lease/renewal times, broadcast,
// interface MTU, and, when configured, domain name, search list (RFC 3397) and host name.

import VNetBuffers
import VNetWire

public struct DHCPConfig: Sendable {
    public var network: IPv4Network
    public var serverAddress: IPv4Address
    public var router: IPv4Address
    public var dnsServers: [IPv4Address]
    public var poolStart: IPv4Address
    public var poolSize: Int
    public var leaseTime: Instant.Duration
    public var offerHold: Instant.Duration
    public var domainName: String?
    public var searchDomains: [String]
    public var hostName: String?
    public var mtu: Int
    public var tftpServerName: String?
    public var bootfile: String?

    public init(network: IPv4Network, serverAddress: IPv4Address, router: IPv4Address, dnsServers: [IPv4Address],
                poolStart: IPv4Address, poolSize: Int = 16, leaseTime: Instant.Duration = .seconds(24 * 3600),
                offerHold: Instant.Duration = .seconds(60), domainName: String? = nil, searchDomains: [String] = [],
                hostName: String? = nil, mtu: Int = 1500, tftpServerName: String? = nil, bootfile: String? = nil) {
        self.network = network
        self.serverAddress = serverAddress
        self.router = router
        self.dnsServers = dnsServers
        self.poolStart = poolStart
        self.poolSize = poolSize
        self.leaseTime = leaseTime
        self.offerHold = offerHold
        self.domainName = domainName
        self.searchDomains = searchDomains
        self.hostName = hostName
        self.mtu = mtu
        self.tftpServerName = tftpServerName
        self.bootfile = bootfile
    }
}

/// What the server decided, for the caller to address and count.
public struct DHCPReply: Equatable, Sendable {
    public var type: DHCPMessageType
    /// Bytes of the DHCP payload written into the caller's buffer.
    public var length: Int
    /// The address offered or acknowledged (0.0.0.0 for NAK and INFORM).
    public var yourAddress: IPv4Address
    /// True when the reply must go to the broadcast addresses (client asked, or NAK).
    public var broadcast: Bool
}

public enum DHCPOutcome: Equatable, Sendable {
    case reply(DHCPReply)
    /// Nothing to send: `reason` names why, for the caller's drop counters.
    case ignored(DHCPIgnoreReason)
}

public enum DHCPIgnoreReason: Equatable, Sendable {
    case notARequest, noMessageType, poolExhausted, otherServer, unsupportedType, replyTooLarge
}

public struct DHCPServer: Sendable {
    public struct Slot: Equatable, Sendable {
        public var mac: MACAddress?
        public var expires: Instant
        public var bound: Bool
    }

    public let config: DHCPConfig
    public private(set) var slots: [Slot]

    public init(config: DHCPConfig) {
        self.config = config
        slots = Array(repeating: Slot(mac: nil, expires: .zero, bound: false), count: config.poolSize)
    }

    /// The address of slot `i`.
    public func address(ofSlot i: Int) -> IPv4Address { IPv4Address(rawValue: config.poolStart.rawValue &+ UInt32(i)) }

    func slotIndex(of address: IPv4Address) -> Int? {
        let d = Int(Int64(address.rawValue) - Int64(config.poolStart.rawValue))
        return d >= 0 && d < slots.count ? d : nil
    }

    func isFree(_ i: Int, for mac: MACAddress, now: Instant) -> Bool {
        let s = slots[i]
        return s.mac == nil || s.mac == mac || s.expires <= now
    }

    /// The current, unexpired lease of `mac`, if any.
    public func lease(for mac: MACAddress, now: Instant) -> IPv4Address? {
        for (i, s) in slots.enumerated() where s.mac == mac && s.bound && s.expires > now { return address(ofSlot: i) }
        return nil
    }

    func chooseSlot(for mac: MACAddress, requested: IPv4Address?, now: Instant) -> Int? {
        if let i = slots.firstIndex(where: { $0.mac == mac }) { return i }
        if let r = requested, let i = slotIndex(of: r), isFree(i, for: mac, now: now) { return i }
        if let i = slots.firstIndex(where: { $0.mac == nil }) { return i }
        var best: Int? = nil
        for (i, s) in slots.enumerated() where s.expires <= now {
            if best == nil || s.expires < slots[best!].expires { best = i }
        }
        return best
    }

    /// Handles one client message and writes the reply's DHCP payload into `buffer` (at least 576 bytes).
    public mutating func handle(_ m: DHCPMessage, now: Instant, into buffer: UnsafeMutableRawBufferPointer) -> DHCPOutcome {
        guard m.op == 1 else { return .ignored(.notARequest) }
        guard let type = m.messageType else { return .ignored(.noMessageType) }
        switch type {
        case .discover:
            guard let i = chooseSlot(for: m.clientMAC, requested: m.requestedAddress, now: now) else { return .ignored(.poolExhausted) }
            if !(slots[i].mac == m.clientMAC && slots[i].bound && slots[i].expires > now) {
                slots[i] = Slot(mac: m.clientMAC, expires: now + config.offerHold, bound: false)
            }
            return write(.offer, to: m, address: address(ofSlot: i), into: buffer)
        case .request:
            if let sid = m.serverIdentifier, sid != config.serverAddress { return .ignored(.otherServer) }
            let wanted = m.requestedAddress ?? (m.clientAddress.isUnspecified ? nil : m.clientAddress)
            guard let w = wanted, let i = slotIndex(of: w), isFree(i, for: m.clientMAC, now: now) else {
                return write(.nak, to: m, address: .any, into: buffer)
            }
            // A MAC holds at most one slot: forget any other it had.
            for j in slots.indices where j != i && slots[j].mac == m.clientMAC { slots[j] = Slot(mac: nil, expires: .zero, bound: false) }
            slots[i] = Slot(mac: m.clientMAC, expires: now + config.leaseTime, bound: true)
            return write(.ack, to: m, address: w, into: buffer)
        case .release:
            if let i = slotIndex(of: m.clientAddress), slots[i].mac == m.clientMAC {
                slots[i].expires = now
                slots[i].bound = false
            }
            return .ignored(.unsupportedType)
        case .decline:
            // The client found the address in use: keep it out of the pool for a lease time.
            if let r = m.requestedAddress, let i = slotIndex(of: r), slots[i].mac == m.clientMAC {
                slots[i] = Slot(mac: MACAddress.zero, expires: now + config.leaseTime, bound: false)
            }
            return .ignored(.unsupportedType)
        case .inform:
            return write(.ack, to: m, address: .any, into: buffer, inform: true)
        case .offer, .ack, .nak:
            return .ignored(.notARequest)
        }
    }

    func write(_ type: DHCPMessageType, to m: DHCPMessage, address: IPv4Address, into buffer: UnsafeMutableRawBufferPointer,
               inform: Bool = false) -> DHCPOutcome {
        var w = DHCPWriter(replyTo: m, into: buffer, yourAddress: address,
                           serverAddress: config.bootfile != nil ? config.serverAddress : .any, bootfile: config.bootfile)
        w.option(DHCPOption.messageType, [type.rawValue])
        w.option(DHCPOption.serverIdentifier, address: config.serverAddress)
        if type != .nak {
            if !inform {
                let lease = UInt32(clamping: config.leaseTime.seconds)
                w.option(DHCPOption.leaseTime, u32: lease)
                w.option(DHCPOption.renewalTime, u32: lease / 2)
                w.option(DHCPOption.rebindingTime, u32: lease / 8 * 7)
            }
            w.option(DHCPOption.subnetMask, address: config.network.netmask)
            w.option(DHCPOption.router, address: config.router)
            w.option(DHCPOption.broadcastAddress, address: config.network.broadcast)
            var dns: [UInt8] = []
            for d in config.dnsServers {
                let v = d.rawValue
                dns += [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
            }
            if !dns.isEmpty { w.option(DHCPOption.dnsServer, dns) }
            w.option(DHCPOption.interfaceMTU, u16: UInt16(clamping: config.mtu))
            if let d = config.domainName, !d.isEmpty { w.option(DHCPOption.domainName, Array(d.utf8)) }
            if !config.searchDomains.isEmpty, let enc = DNSNameEncoding.encode(config.searchDomains) {
                w.option(DHCPOption.domainSearch, enc)
            }
            if let h = config.hostName, !h.isEmpty { w.option(DHCPOption.hostName, Array(h.utf8)) }
            if let t = config.tftpServerName, !t.isEmpty { w.option(DHCPOption.tftpServerName, Array(t.utf8)) }
            if let b = config.bootfile, !b.isEmpty { w.option(DHCPOption.bootfileName, Array(b.utf8)) }
        }
        let len = w.finish()
        if w.overflowed { return .ignored(.replyTooLarge) }
        return .reply(DHCPReply(type: type, length: len, yourAddress: address,
                                broadcast: type == .nak || m.wantsBroadcast || (m.clientAddress.isUnspecified && address.isUnspecified)))
    }
}
