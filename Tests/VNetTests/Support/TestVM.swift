// A "VM" the test drives by hand: one datagram socket (a socketpair end or a vfkit-style unixgram client),
// frames built byte by byte, and reads that wait on a deadline (poll), never a fixed sleep.

import Foundation
import VNet
#if canImport(Glibc)
import Glibc
#endif

enum Frames {
    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var sum: UInt32 = 0
        var i = bytes.startIndex
        while i + 1 < bytes.endIndex {
            sum &+= UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
            i += 2
        }
        if i < bytes.endIndex { sum &+= UInt32(bytes[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) &+ (sum >> 16) }
        return ~UInt16(sum)
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func macBytes(_ m: EthernetAddress) -> [UInt8] { (0 ..< 6).map { UInt8((m.rawValue >> (40 - 8 * UInt64($0))) & 0xFF) } }

    static func ethernet(dst: [UInt8], src: EthernetAddress, type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        var f = dst + macBytes(src) + be16(type) + payload
        while f.count < 60 { f.append(0) }
        return f
    }

    static func ipv4(src: [UInt8], dst: [UInt8], proto: UInt8, _ payload: [UInt8]) -> [UInt8] {
        var h: [UInt8] = [0x45, 0] + be16(UInt16(20 + payload.count)) + [0, 1, 0x40, 0, 64, proto, 0, 0] + src + dst
        let c = checksum(h[...])
        h[10] = UInt8(c >> 8); h[11] = UInt8(c & 0xFF)
        return h + payload
    }

    static func udp(src: UInt16, dst: UInt16, _ payload: [UInt8]) -> [UInt8] {
        be16(src) + be16(dst) + be16(UInt16(8 + payload.count)) + [0, 0] + payload   // checksum 0: none (IPv4)
    }

    enum DHCPType: UInt8 { case discover = 1, offer = 2, request = 3, ack = 5, nak = 6, release = 7 }

    static func dhcp(_ type: DHCPType, mac: EthernetAddress, xid: UInt32, requested: [UInt8]? = nil, server: [UInt8]? = nil,
                     clientAddress: [UInt8] = [0, 0, 0, 0], hostName: String? = nil) -> [UInt8] {
        var b: [UInt8] = [1, 1, 6, 0, UInt8(xid >> 24), UInt8((xid >> 16) & 0xFF), UInt8((xid >> 8) & 0xFF), UInt8(xid & 0xFF),
                          0, 0, 0x80, 0] + clientAddress + [UInt8](repeating: 0, count: 12)
        b += macBytes(mac) + [UInt8](repeating: 0, count: 10 + 64 + 128)
        b += [99, 130, 83, 99, 53, 1, type.rawValue]
        if let r = requested { b += [50, 4] + r }
        if let s = server { b += [54, 4] + s }
        if let h = hostName { b += [12, UInt8(h.utf8.count)] + Array(h.utf8) }
        b.append(255)
        let src: [UInt8] = type == .release ? clientAddress : [0, 0, 0, 0]
        let dst: [UInt8] = type == .release ? (server ?? [255, 255, 255, 255]) : [255, 255, 255, 255]
        return ethernet(dst: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], src: mac, type: 0x0800,
                        ipv4(src: src, dst: dst, proto: 17, udp(src: 68, dst: 67, b)))
    }

    /// A DHCP reply's type, offered address and server identifier, when `frame` is one.
    static func parseDHCPReply(_ f: [UInt8]) -> (type: UInt8, yiaddr: [UInt8], server: [UInt8]?, xid: UInt32)? {
        guard f.count > 14 + 20 + 8 + 240, f[12] == 8, f[13] == 0, f[23] == 17 else { return nil }
        let ihl = Int(f[14] & 0xF) * 4
        let udp = 14 + ihl
        guard f[udp] == 0, f[udp + 1] == 67 else { return nil }
        let bootp = udp + 8
        let yiaddr = Array(f[bootp + 16 ..< bootp + 20])
        var i = bootp + 240
        var type: UInt8 = 0
        var server: [UInt8]? = nil
        while i + 1 < f.count, f[i] != 255 {
            if f[i] == 0 { i += 1; continue }
            let len = Int(f[i + 1])
            guard i + 2 + len <= f.count else { break }
            if f[i] == 53 { type = f[i + 2] }
            if f[i] == 54, len == 4 { server = Array(f[i + 2 ..< i + 6]) }
            i += 2 + len
        }
        let xid = f[bootp + 4 ..< bootp + 8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        return (type, yiaddr, server, xid)
    }

    static func arpRequest(from mac: EthernetAddress, ip: [UInt8], target: [UInt8]) -> [UInt8] {
        ethernet(dst: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], src: mac, type: 0x0806,
                 [0, 1, 8, 0, 6, 4, 0, 1] + macBytes(mac) + ip + [0, 0, 0, 0, 0, 0] + target)
    }

    static func arpReply(from mac: EthernetAddress, ip: [UInt8], to dstMAC: [UInt8], dstIP: [UInt8]) -> [UInt8] {
        ethernet(dst: dstMAC, src: mac, type: 0x0806, [0, 1, 8, 0, 6, 4, 0, 2] + macBytes(mac) + ip + dstMAC + dstIP)
    }

    static func icmpEcho(reply: Bool, from mac: EthernetAddress, to dstMAC: [UInt8], src: [UInt8], dst: [UInt8], id: UInt16, seq: UInt16) -> [UInt8] {
        var icmp: [UInt8] = [reply ? 0 : 8, 0, 0, 0] + be16(id) + be16(seq) + Array("vnet-api-test".utf8)
        let c = checksum(icmp[...])
        icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xFF)
        return ethernet(dst: dstMAC, src: mac, type: 0x0800, ipv4(src: src, dst: dst, proto: 1, icmp))
    }
}

/// One datagram socket standing in for a VM's NIC.
final class TestVM: @unchecked Sendable {
    let fd: Int32
    let mac: EthernetAddress
    var ip: [UInt8] = []
    var gatewayIP: [UInt8] = []

    init(fd: Int32, mac: EthernetAddress) {
        self.fd = fd
        self.mac = mac
    }

    deinit { close(fd) }

    func send(_ frame: [UInt8]) {
        let n = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        precondition(n == frame.count, "send: \(String(cString: strerror(errno)))")
    }

    /// The next frame that `match` accepts, or nil at the deadline; other frames are skipped. It never blocks
    /// a thread of the cooperative pool (the network's `run()` needs one to start): it polls without waiting
    /// and yields between polls.
    func receive(seconds: Double = 10, where match: ([UInt8]) -> Bool) async -> [UInt8]? {
        let deadline = Date().addingTimeInterval(seconds)
        var buf = [UInt8](repeating: 0, count: 65_600)
        while Date() < deadline {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            guard n > 0 else {
                try? await Task.sleep(nanoseconds: 2_000_000)
                continue
            }
            let f = Array(buf[0 ..< n])
            if match(f) { return f }
        }
        return nil
    }

    /// DISCOVER, OFFER, REQUEST, ACK; sets `ip` and `gatewayIP`. Returns false when a step timed out.
    func dhcp(hostName: String? = nil) async -> Bool {
        let xid = UInt32.random(in: 1 ... UInt32.max)
        send(Frames.dhcp(.discover, mac: mac, xid: xid, hostName: hostName))
        func reply(_ t: Frames.DHCPType) -> ([UInt8]) -> Bool {
            { f in Frames.parseDHCPReply(f).map { $0.type == t.rawValue && $0.xid == xid } ?? false }
        }
        guard let offer = await receive(where: reply(.offer)),
              let o = Frames.parseDHCPReply(offer) else { return false }
        send(Frames.dhcp(.request, mac: mac, xid: xid, requested: o.yiaddr, server: o.server, hostName: hostName))
        guard let ack = await receive(where: reply(.ack)),
              let a = Frames.parseDHCPReply(ack) else { return false }
        ip = a.yiaddr
        gatewayIP = a.server ?? []
        return true
    }

    func release() {
        send(Frames.dhcp(.release, mac: mac, xid: 7, server: gatewayIP, clientAddress: ip))
    }

    /// Resolves `target` with ARP; the other side must answer (see `answerARP`). Returns its MAC.
    func arp(_ target: [UInt8], seconds: Double = 10) async -> [UInt8]? {
        send(Frames.arpRequest(from: mac, ip: ip, target: target))
        let r = await receive(seconds: seconds) { f in f.count >= 42 && f[12] == 8 && f[13] == 6 && f[21] == 2 && Array(f[28 ..< 32]) == target }
        return r.map { Array($0[22 ..< 28]) }
    }

    /// Waits for an ARP request for our address and answers it.
    func answerARP(seconds: Double = 10) async -> Bool {
        guard let r = await receive(seconds: seconds, where: { f in
            f.count >= 42 && f[12] == 8 && f[13] == 6 && f[21] == 1 && Array(f[38 ..< 42]) == self.ip
        }) else { return false }
        send(Frames.arpReply(from: mac, ip: ip, to: Array(r[22 ..< 28]), dstIP: Array(r[28 ..< 32])))
        return true
    }

    static func isEcho(_ f: [UInt8], reply: Bool, from src: [UInt8], id: UInt16) -> Bool {
        guard f.count >= 42, f[12] == 8, f[13] == 0, f[23] == 1, Array(f[26 ..< 30]) == src else { return false }
        let icmp = 14 + Int(f[14] & 0xF) * 4
        return f[icmp] == (reply ? 0 : 8) && UInt16(f[icmp + 4]) << 8 | UInt16(f[icmp + 5]) == id
    }
}

/// A unix datagram socket bound to a fresh path under a private directory, as vfkit makes one.
func boundUnixgram(in dir: String, name: String) throws -> (fd: Int32, path: String) {
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
    let path = dir + "/" + name
    var a = sockaddr_un()
    a.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &a.sun_path) { p in
        for (i, b) in path.utf8.enumerated() { p[i] = b }
    }
    let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    guard r == 0 else { throw VirtualNetworkError.system("bind \(path): \(String(cString: strerror(errno)))") }
    return (fd, path)
}

func connectUnix(_ fd: Int32, to path: String) -> Bool {
    var a = sockaddr_un()
    a.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &a.sun_path) { p in
        for (i, b) in path.utf8.enumerated() { p[i] = b }
    }
    return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } } == 0
}

func temporaryDirectory() -> String {
    var template = Array("/tmp/vnet-api-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}

/// Waits for `condition` until a deadline (polling every 10 ms); returns whether it held.
func eventually(seconds: Double = 10, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(nanoseconds: 10_000_000)
    }
    return try await condition()
}
