// Helpers shared by the wire tests: exact-size buffers, a seeded generator, a reference checksum, and a
// dissector that walks a corpus frame through every VNetWire view and records where each layer sits.

import Testing
@testable import VNetWire

// MARK: - Buffers

/// Runs `body` over a fresh heap copy of exactly `bytes.count` bytes, so a read past the end is a read past
/// an allocation (caught by bounds checks in debug builds, and by ASan when enabled).
func parseExact<T>(_ bytes: some Collection<UInt8>, _ body: (UnsafeRawBufferPointer) throws(WireError) -> T) -> Result<T, WireError> {
    let mem = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
    defer { mem.deallocate() }
    mem.copyBytes(from: bytes)
    do { return .success(try body(UnsafeRawBufferPointer(mem))) } catch { return .failure(error) }
}

/// Parses, failing the test on error.
func parseOK<T>(_ bytes: some Collection<UInt8>, _ body: (UnsafeRawBufferPointer) throws(WireError) -> T) throws -> T {
    try parseExact(bytes, body).get()
}

extension Result {
    var value: Success? { if case .success(let v) = self { v } else { nil } }
    var isMalformed: Bool {
        if case .failure(let e) = self, let w = e as? WireError { w == .malformed } else { false }
    }
}

/// A mutable zeroed byte array, handed out as a raw buffer; returns the bytes after `body`.
func build(_ count: Int, fill: UInt8 = 0, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows -> [UInt8] {
    var a = [UInt8](repeating: fill, count: count)
    try a.withUnsafeMutableBytes { try body($0) }
    return a
}

func u16(_ b: some Collection<UInt8>, _ o: Int) -> UInt16 {
    let a = Array(b)
    return UInt16(a[o]) << 8 | UInt16(a[o + 1])
}

func bytes(hex s: String) -> [UInt8] {
    let digits = Array(s.filter { !$0.isWhitespace })
    precondition(digits.count % 2 == 0)
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0 ... $0 + 1]), radix: 16)! }
}

// MARK: - Deterministic randomness

/// SplitMix64: a tiny seeded generator, so every "random" test is the same on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ n: Int) -> [UInt8] { (0 ..< n).map { _ in UInt8.random(in: 0 ... 255, using: &self) } }
}

// MARK: - Reference checksum (RFC 1071, the obvious way: 16-bit words, 32-bit accumulator, end-around carry)

func referenceSum(_ data: [UInt8], initial: UInt32 = 0) -> UInt16 {
    var sum = initial
    var i = 0
    while i < data.count {
        let hi = UInt32(data[i]) << 8
        let lo = i + 1 < data.count ? UInt32(data[i + 1]) : 0
        sum += hi | lo
        sum = (sum & 0xFFFF) + (sum >> 16)
        i += 2
    }
    while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
    return UInt16(sum)
}

func referenceChecksum(_ data: [UInt8]) -> UInt16 { ~referenceSum(data) }

/// The IPv4 pseudo-header of RFC 768 / RFC 9293 as bytes.
func pseudoHeaderBytes(_ src: IPv4Address, _ dst: IPv4Address, proto: UInt8, length: Int) -> [UInt8] {
    func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
    return be32(src.rawValue) + be32(dst.rawValue) + [0, proto, UInt8(length >> 8), UInt8(length & 0xFF)]
}

/// The transport checksum a sender should have stored: reference sum over pseudo-header + segment with its
/// checksum field (at `checksumOffset`) zeroed.
func referenceTransportChecksum(_ segment: [UInt8], checksumOffset: Int, src: IPv4Address, dst: IPv4Address, proto: UInt8) -> UInt16 {
    var s = segment
    s[checksumOffset] = 0; s[checksumOffset + 1] = 0
    return referenceChecksum(pseudoHeaderBytes(src, dst, proto: proto, length: s.count) + s)
}

// MARK: - Dissection of a corpus frame through the VNetWire views

/// Where each layer of a frame sits (ranges index `PcapFrame.captured`) and what each view parsed.
struct Dissection {
    var ethernet: EthernetHeader?
    var arp: ARPPacket?
    var ipv4: IPv4Header?
    /// The IPv4 packet: from the IP header to the end of the captured bytes (Ethernet padding included).
    var l3: Range<Int>
    /// IPv6 next header and payload range, for the IPv6 frames (parsed here in the test: VNetWire has no IPv6 yet).
    var ipv6NextHeader: UInt8?
    /// The transport segment: the IPv4 payloadRange (or IPv6 payload), padding excluded.
    var l4: Range<Int>?
    var udp: UDPHeader?
    var tcp: TCPHeader?
    var icmp: ICMPv4Header?
    /// The UDP payload.
    var app: Range<Int>?
    var dhcp: DHCPMessage?
    var dns: DNSHeader?

    var isIPv4: Bool { ipv4 != nil }
}

enum DissectError: Error { case malformed(String) }

/// Walks `f` through every view that applies. Any WireError is a test failure (corpus frames are well formed).
func dissect(_ f: PcapFrame) throws -> Dissection {
    let c = f.captured
    var d = Dissection(l3: f.linkHeaderLength ..< c.count)
    func sub(_ r: Range<Int>) -> ArraySlice<UInt8> { c[r] }
    func step<T>(_ what: String, _ r: Range<Int>, _ body: (UnsafeRawBufferPointer) throws(WireError) -> T) throws -> T {
        guard let v = parseExact(sub(r), body).value else { throw DissectError.malformed("\(f.testDescription): \(what)") }
        return v
    }
    func transport(_ proto: UInt8, _ d: inout Dissection) throws {
        guard let l4 = d.l4 else { return }
        switch proto {
        case IPProtocol.udp.rawValue:
            let u = try step("udp", l4, UDPHeader.parse)
            d.udp = u
            d.app = l4.lowerBound + 8 ..< l4.lowerBound + u.length
            let app = d.app!
            if d.isIPv4, [67, 68].contains(u.sourcePort), [67, 68].contains(u.destinationPort) {
                d.dhcp = try step("dhcp", app, DHCPMessage.parse)
            }
            if u.sourcePort == 53 || u.destinationPort == 53 {
                d.dns = try step("dns", app, DNSHeader.parse)
            }
        case IPProtocol.tcp.rawValue:
            d.tcp = try step("tcp", l4, TCPHeader.parse)
        case IPProtocol.icmp.rawValue where d.isIPv4:
            d.icmp = try step("icmp", l4, ICMPv4Header.parse)
        default:
            break
        }
    }

    if f.isEthernet {
        d.ethernet = try step("ethernet", 0 ..< c.count, EthernetHeader.parse)
    }
    switch f.etherType {
    case EtherType.arp.rawValue:
        d.arp = try step("arp", d.l3, ARPPacket.parse)
    case EtherType.ipv4.rawValue:
        let ip = try step("ipv4", d.l3, IPv4Header.parse)
        d.ipv4 = ip
        d.l4 = d.l3.lowerBound + ip.payloadRange.lowerBound ..< d.l3.lowerBound + ip.payloadRange.upperBound
        try transport(ip.protocolNumber.rawValue, &d)
    case EtherType.ipv6.rawValue:
        let base = d.l3.lowerBound
        guard d.l3.count >= 40, c[base] >> 4 == 6 else { throw DissectError.malformed("ipv6") }
        let plen = Int(c[base + 4]) << 8 | Int(c[base + 5])
        guard 40 + plen <= d.l3.count else { throw DissectError.malformed("ipv6 length") }
        d.ipv6NextHeader = c[base + 6]
        d.l4 = base + 40 ..< base + 40 + plen
        try transport(c[base + 6], &d)
    default:
        break
    }
    return d
}
