// A thin epoll(7) wrapper: one set, 64-bit tags, a preallocated event array.

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
        var ev = epoll_event(events: mask, data: epoll_data_t(u64: tag))
        guard epoll_ctl(fd, EPOLL_CTL_ADD, target, &ev) == 0 else { throw SyscallError("epoll_ctl(ADD)", errno) }
    }

    public func modify(_ target: Int32, events mask: UInt32, tag: UInt64) throws {
        var ev = epoll_event(events: mask, data: epoll_data_t(u64: tag))
        guard epoll_ctl(fd, EPOLL_CTL_MOD, target, &ev) == 0 else { throw SyscallError("epoll_ctl(MOD)", errno) }
    }

    public func remove(_ target: Int32) {
        var ev = epoll_event()
        _ = epoll_ctl(fd, EPOLL_CTL_DEL, target, &ev)
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) and calls `body(tag, events)` for each ready fd.
    public func wait(timeoutMilliseconds: Int32, _ body: (UInt64, UInt32) -> Void) throws {
        let n = epoll_wait(fd, events, Int32(capacity), timeoutMilliseconds)
        if n < 0 {
            if errno == EINTR { return }
            throw SyscallError("epoll_wait", errno)
        }
        for i in 0 ..< Int(n) { body(events[i].data.u64, events[i].events) }
    }
}
