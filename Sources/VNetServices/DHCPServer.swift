// VNetServices: the gateway's own services (DHCP, TFTP) as pure functions of
// (request, configuration, time) -> reply. No sockets, no clock reads.
//
// Theory of Operation: DHCP (RFC 2131)
// ------------------------------------
// The pool is a fixed array of `poolSize` slots starting at `poolStart` (QEMU: 10.0.2.15, 16 addresses).
// Each slot remembers the last MAC it served even after its lease expires, so a guest that reboots gets its
// old address back; an expired slot is handed to a *different* MAC only when no never-used slot is left
// (oldest expiry first). DISCOVER holds an address for `offerHold` so two clients are never offered the same
// one; REQUEST confirms it (ACK) or refuses it (NAK) when it is outside the pool or bound to another MAC. A
// REQUEST naming another server's identifier is left alone: the client chose someone else. RELEASE ends the
// lease but keeps the MAC. The table has a fixed cap by construction.
// Offers under pressure: an offer nobody requested must not keep a real client out (a guest can DISCOVER
// from hundreds of made-up MACs and never REQUEST). So an offer is a hint, not a claim: a REQUEST for an
// address that is only offered to another MAC is granted (as dnsmasq does), and when no free or expired slot
// is left a DISCOVER reclaims the oldest unconfirmed offer. A bound lease is never taken. A caller that knows
// where a message came from (vnet nat: the switch port) passes it as the client group; one group holds at
// most `offersPerGroup` unconfirmed offers, and a newcomer beyond that replaces its own group's oldest offer,
// so a storm on one port cannot churn the offers of the others. Only when every slot is bound does a DISCOVER
// get no offer, and the caller counts that. Replies carry subnet mask, router, DNS, lease/renewal times, broadcast,
// interface MTU, and, when configured, domain name, search list (RFC 3397) and host name.
// Static leases pin a MAC to a pool address that no other MAC is ever offered; the client's host name
// (option 12, cleaned to one DNS label) or the static lease's is kept with the binding for DNS.
// `generation` changes whenever the set of bindings does, so a caller can persist them (`leases`/`restore`).

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
    /// Fixed MAC -> address (+ host name) bindings; each address must lie in the pool.
    public var staticLeases: [DHCPStaticLease] = []
    /// Unconfirmed offers one client group (e.g. a switch port) may hold at a time.
    public var offersPerGroup: Int = 8

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

/// A fixed binding: `mac` always gets `address` (inside the pool), and `hostName` as its DNS name.
public struct DHCPStaticLease: Equatable, Sendable {
    public var mac: MACAddress
    public var address: IPv4Address
    public var hostName: String?
    public init(mac: MACAddress, address: IPv4Address, hostName: String? = nil) {
        self.mac = mac
        self.address = address
        self.hostName = hostName
    }
}

/// One binding, as `leases(now:)` lists it and the state file stores it.
public struct DHCPLease: Equatable, Sendable {
    public var mac: MACAddress
    public var address: IPv4Address
    public var hostName: String?
    /// Seconds of lease left (0 when expired).
    public var remainingSeconds: UInt64
    public var isStatic: Bool
    public init(mac: MACAddress, address: IPv4Address, hostName: String?, remainingSeconds: UInt64, isStatic: Bool) {
        self.mac = mac
        self.address = address
        self.hostName = hostName
        self.remainingSeconds = remainingSeconds
        self.isStatic = isStatic
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
        /// The client's host name (option 12, cleaned) or the static lease's.
        public var hostName: String? = nil
        /// For an unconfirmed offer: the client group (switch port) the DISCOVER came from, if known.
        public var group: Int? = nil

        /// Offered to a client that has not requested it yet (not a bound lease, not a declined address).
        func isUnconfirmedOffer(now: Instant) -> Bool { mac != nil && mac != .zero && !bound && expires > now }
    }

    public private(set) var config: DHCPConfig
    public private(set) var slots: [Slot]
    /// Bumped whenever a binding is made, renewed with a new name, released or declined (for persistence
    /// and lease events).
    public private(set) var generation: UInt64 = 0
    /// The static lease of each MAC, and the slots static leases reserve.
    var staticByMAC: [MACAddress: DHCPStaticLease] = [:]
    var reservedSlots: Set<Int> = []

    public init(config: DHCPConfig) {
        self.config = config
        slots = Array(repeating: Slot(mac: nil, expires: .zero, bound: false), count: config.poolSize)
        indexStaticLeases()
    }

    mutating func indexStaticLeases() {
        var byMAC: [MACAddress: DHCPStaticLease] = [:]
        var reserved = Set<Int>()
        let start = Int64(config.poolStart.rawValue)
        for l in config.staticLeases {
            let d = Int(Int64(l.address.rawValue) - start)
            guard d >= 0 && d < config.poolSize else { continue }   // validated by the caller; ignored here
            byMAC[l.mac] = l
            reserved.insert(d)
        }
        staticByMAC = byMAC
        reservedSlots = reserved
    }

    /// Replaces the static leases at run time. A dynamic binding of an address that is now reserved for another
    /// MAC is dropped (that guest's next renewal is NAKed and it asks again); the generation changes.
    public mutating func setStaticLeases(_ leases: [DHCPStaticLease]) {
        config.staticLeases = leases
        indexStaticLeases()
        let start = Int64(config.poolStart.rawValue)
        for l in leases {
            let d = Int(Int64(l.address.rawValue) - start)
            guard d >= 0 && d < slots.count, let m = slots[d].mac, m != l.mac else { continue }
            slots[d] = Slot(mac: nil, expires: .zero, bound: false)
        }
        generation &+= 1
    }

    /// Keeps a host name usable as a DNS label: letters, digits and '-', at most 63 bytes; nil when nothing is left.
    public static func cleanHostName(_ name: String?) -> String? {
        guard let n = name else { return nil }
        var out = ""
        for u in n.unicodeScalars {
            if out.utf8.count >= 63 { break }
            if (u >= "a" && u <= "z") || (u >= "A" && u <= "Z") || (u >= "0" && u <= "9") || u == "-" {
                out.unicodeScalars.append(u)
            } else if u == "." {
                break   // a fully qualified name: keep its first label
            }
        }
        while out.hasPrefix("-") { out.removeFirst() }
        while out.hasSuffix("-") { out.removeLast() }
        return out.isEmpty ? nil : out.lowercased()
    }

    /// Every MAC the pool remembers (expired ones too, with 0 seconds left), static leases first.
    public func leases(now: Instant) -> [DHCPLease] {
        var out: [DHCPLease] = []
        for (i, s) in slots.enumerated() {
            guard let mac = s.mac, mac != .zero, s.bound || reservedSlots.contains(i) else { continue }
            let left = s.bound && s.expires > now ? (s.expires - now).seconds : 0
            out.append(DHCPLease(mac: mac, address: address(ofSlot: i), hostName: s.hostName, remainingSeconds: left,
                                 isStatic: staticByMAC[mac] != nil))
        }
        for l in config.staticLeases where !out.contains(where: { $0.mac == l.mac }) {
            out.append(DHCPLease(mac: l.mac, address: l.address, hostName: l.hostName, remainingSeconds: 0, isStatic: true))
        }
        return out.sorted { $0.address.rawValue < $1.address.rawValue }
    }

    /// The name and address of every live binding (for DNS).
    public func boundNames(now: Instant) -> [(String, IPv4Address)] {
        var out: [(String, IPv4Address)] = []
        for (i, s) in slots.enumerated() where s.bound && s.expires > now {
            if let h = s.hostName { out.append((h, address(ofSlot: i))) }
        }
        for l in config.staticLeases {
            if let h = l.hostName, !out.contains(where: { $0.0 == h }) { out.append((h, l.address)) }
        }
        return out
    }

    /// Puts back bindings saved by an earlier run (addresses outside the pool, or that a static lease now
    /// reserves for another MAC, are skipped). Returns how many were restored.
    @discardableResult
    public mutating func restore(_ saved: [DHCPLease], now: Instant) -> Int {
        var n = 0
        for l in saved {
            guard let i = slotIndex(of: l.address), l.mac != .zero, !l.mac.isMulticast else { continue }
            if let st = staticByMAC[l.mac], st.address != l.address { continue }
            if reservedSlots.contains(i) && staticByMAC[l.mac] == nil { continue }
            guard !slots.contains(where: { $0.mac == l.mac }) else { continue }
            slots[i] = Slot(mac: l.mac, expires: now + .seconds(l.remainingSeconds), bound: l.remainingSeconds > 0,
                            hostName: Self.cleanHostName(l.hostName))
            n += 1
        }
        return n
    }

    /// The address of slot `i`.
    public func address(ofSlot i: Int) -> IPv4Address { IPv4Address(rawValue: config.poolStart.rawValue &+ UInt32(i)) }

    func slotIndex(of address: IPv4Address) -> Int? {
        let d = Int(Int64(address.rawValue) - Int64(config.poolStart.rawValue))
        return d >= 0 && d < slots.count ? d : nil
    }

    func isFree(_ i: Int, for mac: MACAddress, now: Instant) -> Bool {
        if let st = staticByMAC[mac] { return slotIndex(of: st.address) == i }
        if reservedSlots.contains(i) { return false }
        let s = slots[i]
        return s.mac == nil || s.mac == mac || s.expires <= now
    }

    /// Whether a REQUEST from `mac` may bind slot `i`: free, or only offered (never bound) to another client.
    func isRequestable(_ i: Int, for mac: MACAddress, now: Instant) -> Bool {
        if isFree(i, for: mac, now: now) { return true }
        if staticByMAC[mac] != nil || reservedSlots.contains(i) { return false }
        return slots[i].isUnconfirmedOffer(now: now)
    }

    /// The oldest live unconfirmed offer of `group` (of any group when nil) and how many that group holds.
    func oldestUnconfirmedOffer(group: Int?, now: Instant) -> (slot: Int?, count: Int) {
        var oldest: Int? = nil
        var count = 0
        for (i, s) in slots.enumerated() where s.isUnconfirmedOffer(now: now) && !reservedSlots.contains(i) {
            if let g = group, s.group != g { continue }
            count += 1
            if oldest == nil || s.expires < slots[oldest!].expires { oldest = i }
        }
        return (oldest, count)
    }

    /// The current, unexpired lease of `mac`, if any.
    public func lease(for mac: MACAddress, now: Instant) -> IPv4Address? {
        for (i, s) in slots.enumerated() where s.mac == mac && s.bound && s.expires > now { return address(ofSlot: i) }
        return nil
    }

    func chooseSlot(for mac: MACAddress, requested: IPv4Address?, group: Int? = nil, now: Instant) -> Int? {
        if let st = staticByMAC[mac] { return slotIndex(of: st.address) }
        if let i = slots.firstIndex(where: { $0.mac == mac }), !reservedSlots.contains(i) { return i }
        if let g = group {
            // A group at its cap replaces its own oldest offer, leaving the rest of the pool to the others.
            let own = oldestUnconfirmedOffer(group: g, now: now)
            if own.count >= max(1, config.offersPerGroup), let i = own.slot { return i }
        }
        if let r = requested, let i = slotIndex(of: r), isFree(i, for: mac, now: now) { return i }
        if let i = slots.indices.first(where: { slots[$0].mac == nil && !reservedSlots.contains($0) }) { return i }
        var best: Int? = nil
        for (i, s) in slots.enumerated() where s.expires <= now && !reservedSlots.contains(i) {
            if best == nil || s.expires < slots[best!].expires { best = i }
        }
        if let b = best { return b }
        // The pool is full: reclaim the oldest offer nobody confirmed (a bound lease is never taken).
        return oldestUnconfirmedOffer(group: nil, now: now).slot
    }

    /// Handles one client message and writes the reply's DHCP payload into `buffer` (at least 576 bytes).
    /// `clientGroup` says where the message came from (vnet nat: the ingress switch port), for the per-group
    /// cap on unconfirmed offers; nil when the caller has one client source (vnet user).
    public mutating func handle(_ m: DHCPMessage, now: Instant, clientGroup: Int? = nil,
                                into buffer: UnsafeMutableRawBufferPointer) -> DHCPOutcome {
        guard m.op == 1 else { return .ignored(.notARequest) }
        guard let type = m.messageType else { return .ignored(.noMessageType) }
        switch type {
        case .discover:
            guard let i = chooseSlot(for: m.clientMAC, requested: m.requestedAddress, group: clientGroup, now: now) else {
                return .ignored(.poolExhausted)
            }
            if !(slots[i].mac == m.clientMAC && slots[i].bound && slots[i].expires > now) {
                slots[i] = Slot(mac: m.clientMAC, expires: now + config.offerHold, bound: false, group: clientGroup)
            }
            return write(.offer, to: m, address: address(ofSlot: i), into: buffer, clientName: staticByMAC[m.clientMAC]?.hostName)
        case .request:
            if let sid = m.serverIdentifier, sid != config.serverAddress { return .ignored(.otherServer) }
            let wanted = m.requestedAddress ?? (m.clientAddress.isUnspecified ? nil : m.clientAddress)
            guard let w = wanted, let i = slotIndex(of: w), isRequestable(i, for: m.clientMAC, now: now) else {
                return write(.nak, to: m, address: .any, into: buffer)
            }
            // A MAC holds at most one slot: forget any other it had.
            for j in slots.indices where j != i && slots[j].mac == m.clientMAC { slots[j] = Slot(mac: nil, expires: .zero, bound: false) }
            let name = staticByMAC[m.clientMAC]?.hostName ?? Self.cleanHostName(m.hostName) ?? (slots[i].mac == m.clientMAC ? slots[i].hostName : nil)
            if !(slots[i].mac == m.clientMAC && slots[i].bound && slots[i].hostName == name) { generation &+= 1 }
            slots[i] = Slot(mac: m.clientMAC, expires: now + config.leaseTime, bound: true, hostName: name)
            return write(.ack, to: m, address: w, into: buffer, clientName: staticByMAC[m.clientMAC]?.hostName)
        case .release:
            if let i = slotIndex(of: m.clientAddress), slots[i].mac == m.clientMAC {
                slots[i].expires = now
                slots[i].bound = false
                generation &+= 1
            }
            return .ignored(.unsupportedType)
        case .decline:
            // The client found the address in use: keep it out of the pool for a lease time.
            if let r = m.requestedAddress, let i = slotIndex(of: r), slots[i].mac == m.clientMAC {
                slots[i] = Slot(mac: MACAddress.zero, expires: now + config.leaseTime, bound: false)
                generation &+= 1
            }
            return .ignored(.unsupportedType)
        case .inform:
            return write(.ack, to: m, address: .any, into: buffer, inform: true)
        case .offer, .ack, .nak:
            return .ignored(.notARequest)
        }
    }

    func write(_ type: DHCPMessageType, to m: DHCPMessage, address: IPv4Address, into buffer: UnsafeMutableRawBufferPointer,
               inform: Bool = false, clientName: String? = nil) -> DHCPOutcome {
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
            if let h = clientName ?? config.hostName, !h.isEmpty { w.option(DHCPOption.hostName, Array(h.utf8)) }
            if let t = config.tftpServerName, !t.isEmpty { w.option(DHCPOption.tftpServerName, Array(t.utf8)) }
            if let b = config.bootfile, !b.isEmpty { w.option(DHCPOption.bootfileName, Array(b.utf8)) }
        }
        let len = w.finish()
        if w.overflowed { return .ignored(.replyTooLarge) }
        return .reply(DHCPReply(type: type, length: len, yourAddress: address,
                                broadcast: type == .nak || m.wantsBroadcast || (m.clientAddress.isUnspecified && address.isUnspecified)))
    }
}
