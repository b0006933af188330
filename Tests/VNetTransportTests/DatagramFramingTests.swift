// DatagramFraming: one frame per datagram, the same length limits as the stream.

import Testing
import VNetTransport

@Suite("DatagramFraming")
struct DatagramFramingTests {
    /// DatagramFraming.Verdict is not Sendable, so test arguments carry this mirror of it.
    enum Expected: Sendable {
        case accept, tooShort, tooLong
        var verdict: DatagramFraming.Verdict {
            switch self { case .accept: .accept; case .tooShort: .tooShort; case .tooLong: .tooLong }
        }
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var received: Int, truncated: Bool, mtu: Int, verdict: Expected
        var testDescription: String { "\(received) bytes\(truncated ? " (truncated)" : "") at MTU \(mtu) -> \(verdict)" }
    }

    @Test("verdicts", arguments: [
        Case(received: 0, truncated: false, mtu: 1500, verdict: .tooShort),
        Case(received: 13, truncated: false, mtu: 1500, verdict: .tooShort),
        Case(received: 14, truncated: false, mtu: 1500, verdict: .accept),
        Case(received: 60, truncated: false, mtu: 1500, verdict: .accept),
        Case(received: 1518, truncated: false, mtu: 1500, verdict: .accept),
        Case(received: 1519, truncated: false, mtu: 1500, verdict: .tooLong),
        Case(received: 100, truncated: true, mtu: 1500, verdict: .tooLong),
        Case(received: 5, truncated: true, mtu: 1500, verdict: .tooLong),
        Case(received: 594, truncated: false, mtu: 576, verdict: .accept),
        Case(received: 595, truncated: false, mtu: 576, verdict: .tooLong),
        Case(received: 65_538, truncated: false, mtu: 65_520, verdict: .accept),
    ])
    func verdict(_ c: Case) {
        #expect(DatagramFraming.check(received: c.received, truncated: c.truncated, mtu: c.mtu) == c.verdict.verdict)
    }

    @Test("frame limits")
    func limits() {
        #expect(FrameLimits.maximumFrame(mtu: 1500) == 1518)
        #expect(FrameLimits.minimumFrame == 14)
        #expect(FrameLimits.qemuMaximumFrame == 69_632)
    }
}
