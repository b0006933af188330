// The drained-peek hint: with SO_PEEK_OFF, a short peek after a plain readable event means the socket is drained
// (a FIN or data arriving later raises a new edge), so no second peek is spent to hear EAGAIN. A hang-up, reset
// or error reported for the socket (EPOLLRDHUP/HUP/ERR) makes the gateway peek once more, and stays in force.

import Testing
@testable import VNetGateway
import VNetBuffers
import VNetWire

@Suite("TCP drained-peek hint")
struct TCPPeekHintTests {
    func peeks(_ h: TCPHarness, _ c: GuestConn) -> Int {
        h.host.calls.filter { if case .peek(let fd, _) = $0 { return fd == c.handle } else { return false } }.count
    }

    @Test("a short peek after a plain readable event is the only peek; the data goes out")
    func shortPeekWithoutHangupIsFinal() throws {
        let h = TCPHarness()
        let c = try h.connect()
        let before = peeks(h, c)
        h.host.remoteSends(c.handle, pattern(100))
        h.gateway.hostReadable(c.tag, now: h.now, peerClosing: false)
        #expect(peeks(h, c) - before == 1)
        let s = try h.oneSegment("data")
        #expect(s.payload == pattern(100))
    }

    @Test("data and FIN in one event with a hang-up: the second peek finds the end of stream and our FIN follows")
    func hangupPeeksAgain() throws {
        let h = TCPHarness()
        let c = try h.connect()
        h.host.remoteSends(c.handle, pattern(50))
        h.host.remoteCloses(c.handle)
        h.gateway.hostReadable(c.tag, now: h.now, peerClosing: true)
        let segs = try h.segments()
        #expect(segs.map(\.payload.count).reduce(0, +) == 50)
        #expect(segs.contains { $0.flags.contains(.fin) })
    }

    @Test("a FIN that arrives after a drained peek is seen at the next event, which reports the hang-up")
    func laterFinRaisesItsOwnEvent() throws {
        let h = TCPHarness()
        let c = try h.connect()
        h.host.remoteSends(c.handle, pattern(10))
        h.gateway.hostReadable(c.tag, now: h.now, peerClosing: false)
        #expect(try h.oneSegment("data").payload == pattern(10))
        h.host.remoteCloses(c.handle)
        h.gateway.hostReadable(c.tag, now: h.now, peerClosing: true)
        let fin = try h.oneSegment("FIN")
        #expect(fin.flags.contains(.fin) && fin.payload.isEmpty)
    }

    @Test("once a hang-up was reported, later short peeks (after a guest ACK) still look for the end of stream")
    func hintIsSticky() throws {
        let h = TCPHarness()
        var c = try h.connect(wscale: nil)
        // A small guest window (unscaled): the first peek is cut by the window, not by the data.
        h.send(h.frame(c, ack: c.ourSeq(0), window: 20))
        h.host.remoteSends(c.handle, pattern(30))
        h.host.remoteCloses(c.handle)
        h.gateway.hostReadable(c.tag, now: h.now, peerClosing: true)
        #expect(try h.segments().map(\.payload.count).reduce(0, +) == 20)
        // The guest acknowledges and opens its window: the rest (a short peek) and then the FIN.
        h.guestSends(&c, ack: c.ourSeq(20), window: 65535)
        let rest = try h.segments()
        #expect(rest.map(\.payload.count).reduce(0, +) == 10)
        #expect(rest.contains { $0.flags.contains(.fin) })
    }
}
