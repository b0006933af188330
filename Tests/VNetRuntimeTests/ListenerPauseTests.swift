// Epoll's listener pause: a listener whose accept failed for want of fds leaves the set for a while (so a
// backlog it cannot accept from does not make every wait return at once), and comes back on its own.

import Foundation
import Testing
import VNetHost
#if canImport(Glibc)
import Glibc
#endif

@Suite("Listener pause")
struct ListenerPauseTests {
    /// A loopback TCP listener with one connection waiting in its backlog, and the client's fd.
    func listenerWithBacklog() throws -> (listener: Int32, client: Int32) {
        let l = try Sys.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try Sys.bind(l, SocketAddress(ipv4: 0x7F00_0001, port: 0))
        try Sys.listen(l)
        let bound = try #require(Sys.localAddress(l)?.ipv4)
        let c = try Sys.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        _ = try Sys.connect(c, SocketAddress(ipv4: 0x7F00_0001, port: bound.port))   // loopback: lands in the backlog
        return (l, c)
    }

    func events(_ e: Epoll, timeout: Int32) throws -> [UInt64] {
        var tags: [UInt64] = []
        try e.wait(timeoutMilliseconds: timeout) { tag, _ in tags.append(tag) }
        return tags
    }

    @Test("a paused listener is not reported, then comes back by itself; a wait forever ends at its turn")
    func pauseAndResume() throws {
        let e = try Epoll()
        let (l, c) = try listenerWithBacklog()
        defer { Sys.close(l); Sys.close(c) }
        try e.add(l, events: Epoll.readable, tag: 7)
        #expect(try events(e, timeout: 1000) == [7], "the waiting connection makes it readable")
        #expect(Epoll.isResourceShortage(EMFILE) && Epoll.isResourceShortage(ENFILE) && !Epoll.isResourceShortage(EAGAIN))
        #expect(!e.pauseListenerIfShort(l, error: ECONNABORTED, tag: 7), "not a shortage: no pause")
        #expect(e.pauseListenerIfShort(l, error: EMFILE, tag: 7))
        #expect(e.pausedListenerCount == 1 && e.listenerPauses == 1)
        #expect(try events(e, timeout: 0).isEmpty, "paused: the backlog does not wake the loop")
        let start = Sys.monotonicNanoseconds()
        var seen: [UInt64] = []
        for _ in 0 ..< 5 where seen.isEmpty { seen = try events(e, timeout: -1) }
        let waited = Sys.monotonicNanoseconds() - start
        #expect(seen == [7], "registered again after the pause")
        #expect(waited >= Epoll.listenerPause - 1_000_000 && waited < 2_000_000_000, "\(waited) ns")
        #expect(e.pausedListenerCount == 0)
    }

    @Test("removing the fd or setting its events forgets its pause (a reused fd number is never modified behind its owner)")
    func removeForgets() throws {
        let e = try Epoll()
        let (l, c) = try listenerWithBacklog()
        defer { Sys.close(l); Sys.close(c) }
        try e.add(l, events: Epoll.readable, tag: 7)
        e.pauseListener(l, events: Epoll.readable, tag: 7)
        e.remove(l)
        #expect(e.pausedListenerCount == 0)
        try e.add(l, events: Epoll.readable, tag: 9)
        e.pauseListener(l, events: Epoll.readable, tag: 9)
        #expect(e.pausedListenerCount == 1)
        try e.modify(l, events: Epoll.readable, tag: 9)
        #expect(e.pausedListenerCount == 0, "the owner set its events itself")
        #expect(try events(e, timeout: 1000) == [9])
    }
}
