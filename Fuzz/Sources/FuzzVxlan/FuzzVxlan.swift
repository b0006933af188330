// Fuzz target: the VXLAN uplink's receive checks and forwarding table (`VxlanTable`, VxlanPort.swift) and the
// header (`VXLANHeader`, VXLAN.swift). The input is records, each an opcode byte then its operands:
//   0 SRC LEN16 BYTES  a datagram (UDP payload) from remote 1, remote 2 (IPv4) or a stranger (SRC % 3)
//   1 SECONDS8         time passes, learned MACs expire
//   2 LEN16 BYTES      a frame the switch sends out: header round trip, flow hash, tag check, where it goes
//   3 OP MAC6 R        a control change: static add/remove, remote add/remove (remote R % 4)
// Checks what a crash would not show: an accepted inner frame lies inside the datagram and within its limits,
// is untagged and carries our VNI; the tables stay under their caps; nothing is learned when learning is off.
import FuzzSupport
import VNetRuntime

@_cdecl("FuzzVxlan_main")
public func fuzzVxlanMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzVxlan)
}

let remotes = [VxlanEndpoint(address: IPAddress(IPv4Address(198, 18, 0, 2)), port: 4789),
               VxlanEndpoint(address: IPAddress(IPv4Address(198, 18, 0, 3)), port: 8472),
               VxlanEndpoint(address: IPAddress(IPv4Address(198, 18, 0, 9)), port: 4789),
               VxlanEndpoint(address: IPAddress(IPv6Address.loopback), port: 4789)]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVxlan(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let learning = input[0] & 1 == 0
    let mtu = 576 + Int(input[0] >> 1) * 8
    let table = VxlanTable(vni: 42, remotes: Array(remotes[0 ..< 2]), learning: learning, mtu: mtu, ageingSeconds: 30)
    var now: UInt64 = 1_000_000_000
    var i = 1
    func take(_ n: Int) -> UnsafeRawBufferPointer? {
        guard i + n <= size else { return nil }
        defer { i += n }
        return UnsafeRawBufferPointer(rebasing: input[i ..< i + n])
    }
    while let op = take(1)?[0] {
        switch op % 4 {
        case 0:
            guard let h = take(3) else { return 0 }
            let n = min(Int(h[1]) << 8 | Int(h[2]), size - i)
            guard let d = take(n) else { return 0 }
            let source = remotes[Int(h[0]) % 3]
            if let r = table.accept(d, from: source.address, now: now) {
                precondition(r.lowerBound == 8 && r.upperBound == d.count, "inner frame outside the datagram")
                precondition(r.count >= 14 && r.count <= mtu + 14, "inner frame outside its limits")
                precondition(!VXLANHeader.isTaggedInner(d.slice(r)), "a tagged inner frame passed")
                precondition((try? VXLANHeader.parse(d))?.vni == 42, "another VNI passed")
                // Trust is by address: the stranger (remote 2) passes only once a control change added it.
                precondition(table.remotes.contains { $0.address == source.address }, "a datagram from no configured remote passed")
            }
        case 1:
            guard let s = take(1) else { return 0 }
            now &+= UInt64(s[0]) * 1_000_000_000
            table.expire(now: now)
        case 2:
            guard let h = take(2) else { return 0 }
            let n = min(Int(h[0]) << 8 | Int(h[1]), size - i)
            guard let f = take(n) else { return 0 }
            if let v = try? VXLANHeader.parse(f) {
                var out = [UInt8](repeating: 0xFF, count: 8)
                out.withUnsafeMutableBytes { _ = v.emit(into: $0) }
                let back = out.withUnsafeBytes { try? VXLANHeader.parse($0) }
                precondition(back == v && out[0] == 0x08 && out[1 ..< 4].allSatisfy { $0 == 0 } && out[7] == 0, "header round trip")
            }
            _ = VXLANHeader.flowHash(f)
            _ = VXLANHeader.isTaggedInner(f)
            if f.count >= 6, let r = table.unicastRemote(for: MACAddress(reading: f, at: 0), now: now) {
                precondition(table.remotes.contains(r) || table.statics.values.contains(r), "a frame goes to an unknown remote")
            }
        default:
            guard let c = take(8) else { return 0 }
            let mac = MACAddress(reading: c, at: 1)
            let r = remotes[Int(c[7]) % 4]
            switch c[0] % 4 {
            case 0: try? table.addStatic(mac, r)
            case 1: try? table.removeStatic(mac)
            case 2: try? table.addRemote(r)
            default: try? table.removeRemote(r)
            }
        }
        precondition(table.learned.count <= VxlanUplink.maximumLearned && table.statics.count <= VxlanUplink.maximumStatic
                     && table.remotes.count <= VxlanUplink.maximumRemotes, "a table beyond its cap")
        precondition(learning || table.learned.isEmpty, "learned with learning off")
        precondition(table.learned.values.allSatisfy { table.remotes.contains($0.remote) }, "a MAC learned behind a remote that is gone")
    }
    return 0
}
