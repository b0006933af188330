// Helpers for the framing tests: length-prefixed stream bytes, feeding a deframer, collecting its verdicts.

import VNetTransport

/// A recognisable Ethernet-sized frame: byte i depends on i and `tag`.
func frame(_ length: Int, tag: UInt8) -> [UInt8] {
    (0 ..< length).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ Int(tag) &* 101) }
}

/// QEMU stream framing: 4-byte big-endian length, then the frame.
func framed(_ f: [UInt8]) -> [UInt8] { prefix(f.count) + f }

func prefix(_ n: Int) -> [UInt8] {
    [UInt8(n >> 24 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
}

/// What `next()` said, with frames copied out (the deframer hands them out in place).
enum Verdict: Equatable {
    case frame([UInt8])
    case desync
}

/// Copies `bytes` into the deframer's read space, as many reads as it takes (each at most the space offered).
func feed(_ d: StreamDeframer, _ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let space = d.readSpace
        precondition(space.count > 0)
        let n = min(space.count, bytes.count - offset)
        space.copyBytes(from: bytes[offset ..< offset + n])
        d.didRead(n)
        offset += n
    }
}

/// Calls `next()` until it needs more bytes (or loses sync).
func collect(_ d: StreamDeframer) -> [Verdict] {
    var out: [Verdict] = []
    while true {
        switch d.next() {
        case .frame(let f): out.append(.frame(Array(f)))
        case .needMore: return out
        case .desync: out.append(.desync); return out
        }
    }
}

/// Feeds then collects.
func feedAndCollect(_ d: StreamDeframer, _ bytes: [UInt8]) -> [Verdict] {
    feed(d, bytes)
    return collect(d)
}

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
}
