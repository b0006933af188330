// A thin epoll(7) wrapper: one set, 64-bit tags, a preallocated event array.
//
// Theory of Operation
// -------------------
// Level-triggered listeners stay readable while connections wait in their backlog. When accept(2) fails for
// want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM), waiting on such a listener again would return at once,
// forever: the loop spins at 100% CPU until an fd frees up. So `pauseListener` takes it out of the set (events 0)
// for a while, and `wait` puts it back once the pause is over (the wait's timeout is cut to the earliest
// resume). The connections wait in the backlog meanwhile; nothing is lost. `remove`, `add` and `modify` forget any pause
// of that fd, so a closed listener's number reused by another socket is never modified behind its owner's back.

import CVNetShim
#if canImport(Glibc)
import Glibc
#endif

public final class Epoll {
    public let fd: Int32
    let events: UnsafeMutablePointer<epoll_event>
    public let capacity: Int

    public init(capacity: Int = 256) throws {
        fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard fd >= 0 else { throw SyscallError("epoll_create1", errno) }
        self.capacity = capacity
        events = .allocate(capacity: capacity)
    }

    deinit {
        events.deallocate()
        Glibc.close(fd)
    }

    public static let readable = UInt32(EPOLLIN.rawValue)
    public static let writable = UInt32(EPOLLOUT.rawValue)
    public static let error = UInt32(EPOLLERR.rawValue)
    public static let edgeTriggered = UInt32(EPOLLET.rawValue)
    public static let hangup = UInt32(EPOLLHUP.rawValue) | UInt32(EPOLLRDHUP.rawValue)

    public func add(_ target: Int32, events mask: UInt32, tag: UInt64) throws {
        forgetPause(target)
        var ev = epoll_event(events: mask, data: epoll_data_t(u64: tag))
        guard epoll_ctl(fd, EPOLL_CTL_ADD, target, &ev) == 0 else { throw SyscallError("epoll_ctl(ADD)", errno) }
    }

    public func modify(_ target: Int32, events mask: UInt32, tag: UInt64) throws {
        forgetPause(target)
        var ev = epoll_event(events: mask, data: epoll_data_t(u64: tag))
        guard epoll_ctl(fd, EPOLL_CTL_MOD, target, &ev) == 0 else { throw SyscallError("epoll_ctl(MOD)", errno) }
    }

    public func remove(_ target: Int32) {
        forgetPause(target)
        var ev = epoll_event()
        _ = epoll_ctl(fd, EPOLL_CTL_DEL, target, &ev)
    }

    // MARK: Listeners paused for want of fds

    struct PausedListener {
        var fd: Int32
        var events: UInt32
        var tag: UInt64
        var until: UInt64
    }
    var paused: [PausedListener] = []
    /// How often a listener was paused (each accept failure for want of a resource counts once).
    public private(set) var listenerPauses: UInt64 = 0
    public static let listenerPause: UInt64 = 100_000_000
    public var pausedListenerCount: Int { paused.count }

    /// Whether accept's `error` means a resource ran out (the connection waits in the backlog) rather than
    /// something about the connection itself (ECONNABORTED, EAGAIN: try the next one / wait for an event).
    public static func isResourceShortage(_ error: Int32) -> Bool {
        error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM
    }

    /// Takes the listener `target` out of the set for `nanoseconds`; `wait` registers it again with `events`
    /// and `tag` afterwards. Call when accept failed with `isResourceShortage`.
    public func pauseListener(_ target: Int32, events mask: UInt32, tag: UInt64, for nanoseconds: UInt64 = Epoll.listenerPause) {
        listenerPauses &+= 1
        let until = Sys.monotonicNanoseconds() &+ nanoseconds
        if let i = paused.firstIndex(where: { $0.fd == target }) {
            paused[i].until = until
            return
        }
        var ev = epoll_event(events: 0, data: epoll_data_t(u64: tag))
        guard epoll_ctl(fd, EPOLL_CTL_MOD, target, &ev) == 0 else { return }
        paused.append(PausedListener(fd: target, events: mask, tag: tag, until: until))
    }

    /// Accept on `target` failed with `error`: pauses the listener when a resource ran out. True if it did.
    @discardableResult
    public func pauseListenerIfShort(_ target: Int32, error: Int32, events mask: UInt32 = Epoll.readable, tag: UInt64) -> Bool {
        guard Epoll.isResourceShortage(error) else { return false }
        pauseListener(target, events: mask, tag: tag)
        return true
    }

    func forgetPause(_ target: Int32) {
        if !paused.isEmpty { paused.removeAll { $0.fd == target } }
    }

    /// Registers the listeners whose pause is over again; returns the milliseconds until the next one is due.
    func resumePausedListeners() -> Int32? {
        guard !paused.isEmpty else { return nil }
        let now = Sys.monotonicNanoseconds()
        var next = UInt64.max
        var kept = 0
        for j in 0 ..< paused.count {
            let p = paused[j]
            if p.until <= now {
                var ev = epoll_event(events: p.events, data: epoll_data_t(u64: p.tag))
                _ = epoll_ctl(fd, EPOLL_CTL_MOD, p.fd, &ev)
            } else {
                paused[kept] = p
                kept += 1
                next = min(next, p.until)
            }
        }
        paused.removeLast(paused.count - kept)
        guard kept > 0 else { return nil }
        return Int32(clamping: (next - now + 999_999) / 1_000_000)
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) and calls `body(tag, events)` for each ready fd.
    /// Paused listeners whose pause is over are registered again first, and the wait ends by the next one's turn.
    public func wait(timeoutMilliseconds: Int32, _ body: (UInt64, UInt32) -> Void) throws {
        var timeoutMilliseconds = timeoutMilliseconds
        if let due = resumePausedListeners(), timeoutMilliseconds < 0 || due < timeoutMilliseconds { timeoutMilliseconds = due }
        let n = epoll_wait(fd, events, Int32(capacity), timeoutMilliseconds)
        if n < 0 {
            if errno == EINTR { return }
            throw SyscallError("epoll_wait", errno)
        }
        for i in 0 ..< Int(n) { body(events[i].data.u64, events[i].events) }
    }
}
