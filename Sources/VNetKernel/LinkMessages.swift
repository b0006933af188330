// rtnetlink link and address messages as values: requests built with NetlinkWriter, replies decoded from
// RTM_NEWLINK / RTM_NEWADDR payloads. Pure: no syscalls (RouteSocket sends and receives them).

import VNetWire

/// What vnet knows about one network interface (from an RTM_NEWLINK message).
public struct LinkInfo: Equatable, Sendable {
    public var index: Int32
    public var name: String
    public var flags: UInt32
    public var mtu: UInt32?
    public var master: Int32?
    /// IFLA_INFO_KIND: "bridge", "veth", "tun", ...; nil for plain devices.
    public var kind: String?
    public var mac: [UInt8]?
    /// For bridges: priority (2 bytes) and address (6 bytes) of IFLA_BR_BRIDGE_ID.
    public var bridgeID: [UInt8]?
    /// For bridges: IFLA_BR_STP_STATE (0 off, 1 kernel STP, 2 user STP).
    public var stpState: UInt32?

    public var isUp: Bool { flags & 1 != 0 }
    public var isBridge: Bool { kind == "bridge" }

    /// The bridge id as brctl prints it: "8000.525400123456".
    public var bridgeIDText: String {
        guard let id = bridgeID, id.count == 8 else { return "" }
        func hex(_ b: UInt8) -> String { (b < 16 ? "0" : "") + String(b, radix: 16) }
        return hex(id[0]) + hex(id[1]) + "." + id[2...].map(hex).joined()
    }

    public init(index: Int32, name: String, flags: UInt32 = 0, mtu: UInt32? = nil, master: Int32? = nil, kind: String? = nil,
                mac: [UInt8]? = nil, bridgeID: [UInt8]? = nil, stpState: UInt32? = nil) {
        self.index = index
        self.name = name
        self.flags = flags
        self.mtu = mtu
        self.master = master
        self.kind = kind
        self.mac = mac
        self.bridgeID = bridgeID
        self.stpState = stpState
    }

    /// Decodes an RTM_NEWLINK payload (ifinfomsg + attributes). Throws on any length inconsistency; a link
    /// without a name is malformed.
    public static func parse(_ payload: ArraySlice<UInt8>) throws(NetlinkParseError) -> LinkInfo {
        guard payload.count >= Netlink.ifinfomsgLength else { throw .truncated("ifinfomsg") }
        let index = Int32(bitPattern: payload.le32(4))
        let flags = payload.le32(8)
        let attrs = try NetlinkAttributes.parse(payload[(payload.startIndex + Netlink.ifinfomsgLength)...])
        guard let nameAttr = NetlinkAttributes.first(LinkAttribute.ifname, in: attrs) else { throw .truncated("link without IFLA_IFNAME") }
        var link = LinkInfo(index: index, name: nameAttr.string, flags: flags)
        link.mtu = NetlinkAttributes.first(LinkAttribute.mtu, in: attrs)?.u32
        if let m = NetlinkAttributes.first(LinkAttribute.master, in: attrs)?.u32 { link.master = Int32(bitPattern: m) }
        if let a = NetlinkAttributes.first(LinkAttribute.address, in: attrs), a.value.count == 6 { link.mac = Array(a.value) }
        if let info = NetlinkAttributes.first(LinkAttribute.linkInfo, in: attrs) {
            let inner = try info.nested()
            if let k = NetlinkAttributes.first(LinkAttribute.infoKind, in: inner) { link.kind = k.string }
            if link.kind == "bridge", let data = NetlinkAttributes.first(LinkAttribute.infoData, in: inner) {
                let br = try data.nested()
                if let id = NetlinkAttributes.first(LinkAttribute.bridgeID, in: br), id.value.count == 8 { link.bridgeID = Array(id.value) }
                link.stpState = NetlinkAttributes.first(LinkAttribute.bridgeSTPState, in: br)?.u32
            }
        }
        return link
    }
}

/// One IPv4 address on an interface (from an RTM_NEWADDR message).
public struct AddressInfo: Equatable, Sendable {
    public var index: Int32
    public var address: IPv4Address
    public var prefixLength: Int

    public init(index: Int32, address: IPv4Address, prefixLength: Int) {
        self.index = index
        self.address = address
        self.prefixLength = prefixLength
    }

    public var cidr: String { "\(address)/\(prefixLength)" }

    /// Decodes an RTM_NEWADDR payload; nil for families other than AF_INET or an address without IFA_LOCAL
    /// (or IFA_ADDRESS) of exactly 4 bytes.
    public static func parse(_ payload: ArraySlice<UInt8>) throws(NetlinkParseError) -> AddressInfo? {
        guard payload.count >= Netlink.ifaddrmsgLength else { throw .truncated("ifaddrmsg") }
        let s = payload.startIndex
        let family = payload[s]
        let prefix = Int(payload[s + 1])
        let index = Int32(bitPattern: payload.le32(4))
        let attrs = try NetlinkAttributes.parse(payload[(s + Netlink.ifaddrmsgLength)...])
        guard family == 2, prefix <= 32 else { return nil }
        let a = NetlinkAttributes.first(AddressAttribute.local, in: attrs) ?? NetlinkAttributes.first(AddressAttribute.address, in: attrs)
        guard let v = a?.value, v.count == 4 else { return nil }
        let raw = UInt32(v[v.startIndex]) << 24 | UInt32(v[v.startIndex + 1]) << 16 | UInt32(v[v.startIndex + 2]) << 8 | UInt32(v[v.startIndex + 3])
        return AddressInfo(index: index, address: IPv4Address(rawValue: raw), prefixLength: prefix)
    }
}

/// Builders for the requests vnet sends.
public enum LinkRequests {
    static let ackFlags = Netlink.request | Netlink.ack

    public static func dumpLinks(sequence: UInt32) -> [UInt8] {
        var w = NetlinkWriter(type: Netlink.getLink, flags: Netlink.request | Netlink.dump, sequence: sequence)
        w.ifinfomsg()
        return w.finish()
    }

    public static func dumpAddresses(sequence: UInt32) -> [UInt8] {
        var w = NetlinkWriter(type: Netlink.getAddress, flags: Netlink.request | Netlink.dump, sequence: sequence)
        w.ifaddrmsg(family: 2, prefixLength: 0, index: 0)
        return w.finish()
    }

    /// RTM_NEWLINK creating `name` of `kind` (fails with EEXIST if it exists).
    public static func create(name: String, kind: String, sequence: UInt32) -> [UInt8] {
        var w = NetlinkWriter(type: Netlink.newLink, flags: ackFlags | Netlink.create | Netlink.exclusive, sequence: sequence)
        w.ifinfomsg()
        w.attribute(LinkAttribute.ifname, string: name)
        w.beginNested(LinkAttribute.linkInfo)
        w.attribute(LinkAttribute.infoKind, Array(kind.utf8))
        w.endNested()
        return w.finish()
    }

    public static func delete(index: Int32, sequence: UInt32) -> [UInt8] {
        var w = NetlinkWriter(type: Netlink.delLink, flags: ackFlags, sequence: sequence)
        w.ifinfomsg(index: index)
        return w.finish()
    }

    /// Sets (or, with 0, clears) the master of interface `index`.
    public static func setMaster(index: Int32, master: Int32, sequence: UInt32) -> [UInt8] {
        var w = NetlinkWriter(type: Netlink.newLink, flags: ackFlags, sequence: sequence)
        w.ifinfomsg(index: index)
        w.attribute(LinkAttribute.master, u32: UInt32(bitPattern: master))
        return w.finish()
    }

    /// Brings interface `index` up or down (IFF_UP in flags, with IFF_UP in the change mask).
    public static func setUp(index: Int32, up: Bool, sequence: UInt32) -> [UInt8] {
        var w = NetlinkWriter(type: Netlink.newLink, flags: ackFlags, sequence: sequence)
        w.ifinfomsg(index: index, flags: up ? 1 : 0, change: 1)
        return w.finish()
    }

    public static func setMTU(index: Int32, mtu: UInt32, sequence: UInt32) -> [UInt8] {
        var w = NetlinkWriter(type: Netlink.newLink, flags: ackFlags, sequence: sequence)
        w.ifinfomsg(index: index)
        w.attribute(LinkAttribute.mtu, u32: mtu)
        return w.finish()
    }

    /// Turns the kernel's STP on or off on bridge `index`.
    public static func setSTP(index: Int32, on: Bool, sequence: UInt32) -> [UInt8] {
        var w = NetlinkWriter(type: Netlink.newLink, flags: ackFlags, sequence: sequence)
        w.ifinfomsg(index: index)
        w.beginNested(LinkAttribute.linkInfo)
        w.attribute(LinkAttribute.infoKind, Array("bridge".utf8))
        w.beginNested(LinkAttribute.infoData)
        w.attribute(LinkAttribute.bridgeSTPState, u32: on ? 1 : 0)
        w.endNested()
        w.endNested()
        return w.finish()
    }

    /// RTM_NEWADDR / RTM_DELADDR for an IPv4 address with its prefix (local = address; broadcast set on add).
    public static func address(add: Bool, index: Int32, address: IPv4Address, prefixLength: Int, sequence: UInt32) -> [UInt8] {
        let flags = add ? ackFlags | Netlink.create | Netlink.exclusive : ackFlags
        var w = NetlinkWriter(type: add ? Netlink.newAddress : Netlink.delAddress, flags: flags, sequence: sequence)
        w.ifaddrmsg(family: 2, prefixLength: UInt8(prefixLength), index: index)
        func bytes(_ a: IPv4Address) -> [UInt8] {
            [UInt8(a.rawValue >> 24), UInt8((a.rawValue >> 16) & 0xFF), UInt8((a.rawValue >> 8) & 0xFF), UInt8(a.rawValue & 0xFF)]
        }
        w.attribute(AddressAttribute.local, bytes(address))
        w.attribute(AddressAttribute.address, bytes(address))
        if add && prefixLength < 31 {
            w.attribute(AddressAttribute.broadcast, bytes(IPv4Network(address: address, prefixLength: prefixLength).broadcast))
        }
        return w.finish()
    }
}
