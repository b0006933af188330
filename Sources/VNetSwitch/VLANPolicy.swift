// 802.1Q membership of one switch port.
//
// An access port belongs to one VLAN: its frames arrive untagged and leave untagged (a tagged frame arriving on
// an access port is dropped, as a frame for a VLAN the port is not in). A trunk port carries a set of VLANs
// tagged, plus optionally one native VLAN untagged. VLAN 1 is the default, so a switch with no VLAN
// configuration behaves as one plain segment.

public enum VLANPolicy: Equatable, Sendable, CustomStringConvertible {
    case access(UInt16)
    /// `allowed` VIDs tagged (1...4094); `native`, when set, carried untagged.
    case trunk(allowed: VLANSet, native: UInt16?)

    public static let defaultVLAN: UInt16 = 1

    /// The VLAN an incoming frame belongs to, or nil when this port does not carry it.
    @inline(__always)
    public func ingressVLAN(tag: UInt16?) -> UInt16? {
        switch self {
        case .access(let v):
            return tag == nil ? v : nil
        case .trunk(let allowed, let native):
            guard let t = tag else { return native }
            let vid = t & 0x0FFF
            if vid == 0 { return native }   // priority-tagged: the native VLAN
            return allowed.contains(vid) ? vid : nil
        }
    }

    /// Whether a frame of `vlan` leaves this port, and whether it leaves tagged.
    @inline(__always)
    public func egress(vlan: UInt16) -> (member: Bool, tagged: Bool) {
        switch self {
        case .access(let v):
            return (v == vlan, false)
        case .trunk(let allowed, let native):
            if native == vlan { return (true, false) }
            return (allowed.contains(vlan), true)
        }
    }

    public var description: String {
        switch self {
        case .access(let v): return "access vlan \(v)"
        case .trunk(let allowed, let native):
            return "trunk vlans \(allowed)" + (native.map { " native \($0)" } ?? "")
        }
    }

    /// Parses `vlan=N` (access) or `trunk=A,B-C[;native=N]` option values (see the CLI).
    public static func parse(access: String?, trunk: String?, native: String?) -> Result<VLANPolicy, VLANParseError> {
        if access != nil && trunk != nil { return .failure(VLANParseError("a port is either access (vlan=) or trunk (trunk=), not both")) }
        if let a = access {
            guard let v = UInt16(a), (1 ... 4094).contains(v) else { return .failure(VLANParseError("vlan=\(a): expected a VLAN id 1-4094")) }
            if native != nil { return .failure(VLANParseError("native= applies to trunk ports only")) }
            return .success(.access(v))
        }
        var nativeVID: UInt16? = nil
        if let n = native {
            guard let v = UInt16(n), (1 ... 4094).contains(v) else { return .failure(VLANParseError("native=\(n): expected a VLAN id 1-4094")) }
            nativeVID = v
        }
        guard let t = trunk else {
            if nativeVID != nil { return .failure(VLANParseError("native= applies to trunk ports only")) }
            return .success(.access(defaultVLAN))
        }
        var set = VLANSet()
        for part in t.split(separator: ":", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2,
                  let lo = UInt16(bounds[0]), let hi = UInt16(bounds.last!), lo >= 1, hi <= 4094, lo <= hi else {
                return .failure(VLANParseError("trunk=\(t): expected VLAN ids or ranges 1-4094 separated by ':' (e.g. 10:20-29)"))
            }
            for v in lo ... hi { set.insert(v) }
        }
        return .success(.trunk(allowed: set, native: nativeVID))
    }
}

public struct VLANParseError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A set of VLAN ids as a 4096-bit map: membership tests never allocate or hash.
public struct VLANSet: Equatable, Sendable, CustomStringConvertible {
    var words = [UInt64](repeating: 0, count: 64)

    public init() {}
    public init(_ vids: [UInt16]) { for v in vids { insert(v) } }

    public mutating func insert(_ vid: UInt16) {
        let v = Int(vid & 0x0FFF)
        words[v >> 6] |= 1 << UInt64(v & 63)
    }

    @inline(__always)
    public func contains(_ vid: UInt16) -> Bool {
        let v = Int(vid & 0x0FFF)
        return words[v >> 6] & (1 << UInt64(v & 63)) != 0
    }

    public var description: String {
        var out: [String] = []
        var v = 1
        while v < 4095 {
            guard contains(UInt16(v)) else { v += 1; continue }
            var end = v
            while end + 1 < 4095 && contains(UInt16(end + 1)) { end += 1 }
            out.append(end == v ? "\(v)" : "\(v)-\(end)")
            v = end + 1
        }
        return out.joined(separator: ":")
    }
}
