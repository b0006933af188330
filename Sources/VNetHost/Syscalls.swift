// VNetHost: the only module that makes syscalls.
//
// Theory of Operation
// -------------------
// One thin wrapper per call, in the style of swift-system: EINTR is retried, EAGAIN becomes a would-block
// result, and any other failure throws `SyscallError` naming the call and errno. Everything is non-blocking
// and close-on-exec. Higher layers (the runtime) own policy; this module owns no state but the fds it is
// handed.

import CVNetShim
#if canImport(Glibc)
import Glibc
#endif

public struct SyscallError: Error, CustomStringConvertible, Sendable {
    public var call: String
    public var errno: Int32
    public init(_ call: String, _ errno: Int32) { self.call = call; self.errno = errno }
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}

/// A failure of the host layer that is not one call's errno (a path that is not a socket, a namespace that
/// cannot be entered): its description is the whole message.
public struct HostError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

@inline(__always) func retryEINTR<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let r = body()
        if r == -1 && errno == EINTR { continue }
        return r
    }
}

public enum IOResult: Equatable {
    case done(Int)
    case wouldBlock
    case closed
    case failed(Int32)
}

public enum Sys {
    public static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    public static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    public static func setNonBlocking(_ fd: Int32) throws {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SyscallError("fcntl(O_NONBLOCK)", errno) }
    }

    public static func read(_ fd: Int32, into buf: UnsafeMutableRawBufferPointer) -> IOResult {
        let n = retryEINTR { Glibc.read(fd, buf.baseAddress, buf.count) }
        if n > 0 { return .done(n) }
        if n == 0 { return .closed }
        if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
        return .failed(errno)
    }

    public static func write(_ fd: Int32, _ buf: UnsafeRawBufferPointer) -> IOResult {
        let n = retryEINTR { Glibc.write(fd, buf.baseAddress, buf.count) }
        if n >= 0 { return .done(n) }
        if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
        return .failed(errno)
    }

    /// send(2) with MSG_NOSIGNAL, so a vanished peer is an error, never SIGPIPE.
    public static func send(_ fd: Int32, _ buf: UnsafeRawBufferPointer) -> IOResult {
        let n = retryEINTR { Glibc.send(fd, buf.baseAddress, buf.count, Int32(MSG_NOSIGNAL)) }
        if n >= 0 { return .done(n) }
        if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
        return .failed(errno)
    }

    /// sendmsg(2) of `count` iovecs, with MSG_NOSIGNAL.
    public static func sendGather(_ fd: Int32, _ iov: UnsafeMutablePointer<iovec>, count: Int) -> IOResult {
        var m = msghdr()
        m.msg_iov = iov
        m.msg_iovlen = count
        let n = retryEINTR { Glibc.sendmsg(fd, &m, Int32(MSG_NOSIGNAL)) }
        if n >= 0 { return .done(n) }
        if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
        return .failed(errno)
    }

    public static func sendTo(_ fd: Int32, _ buf: UnsafeRawBufferPointer, _ addr: SocketAddress) -> IOResult {
        var a = addr
        let n = a.withSockaddr { sa, len in retryEINTR { Glibc.sendto(fd, buf.baseAddress, buf.count, Int32(MSG_NOSIGNAL), sa, len) } }
        if n >= 0 { return .done(n) }
        if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
        return .failed(errno)
    }

    /// recvfrom(2) with MSG_TRUNC: `.done` carries the datagram's real length, which may exceed the buffer.
    public static func receiveFrom(_ fd: Int32, into buf: UnsafeMutableRawBufferPointer, from: inout SocketAddress) -> IOResult {
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = withUnsafeMutablePointer(to: &from.storage) { sp in
            sp.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                retryEINTR { Glibc.recvfrom(fd, buf.baseAddress, buf.count, Int32(MSG_TRUNC), sa, &len) }
            }
        }
        from.length = len
        if n >= 0 { return .done(n) }
        if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
        return .failed(errno)
    }

    /// recv(2) with MSG_TRUNC.
    /// recv(2) with `flags`, for TCP's peek (MSG_PEEK) and discard (MSG_TRUNC, where a nil buffer drops `count`
    /// bytes without copying them). `.done(0)` is end of stream.
    public static func receive(_ fd: Int32, into buf: UnsafeMutableRawPointer?, count: Int, flags: Int32) -> IOResult {
        let n = retryEINTR { Glibc.recv(fd, buf, count, flags) }
        if n >= 0 { return .done(n) }
        if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
        return .failed(errno)
    }

    /// shutdown(2) of the write side: the peer sees FIN once the queued bytes are sent.
    public static func shutdownWrite(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    public static func receive(_ fd: Int32, into buf: UnsafeMutableRawBufferPointer) -> IOResult {
        let n = retryEINTR { Glibc.recv(fd, buf.baseAddress, buf.count, Int32(MSG_TRUNC)) }
        if n >= 0 { return .done(n) }
        if errno == EAGAIN || errno == EWOULDBLOCK { return .wouldBlock }
        return .failed(errno)
    }

    public static func socket(_ domain: Int32, _ type: Int32, _ proto: Int32) throws -> Int32 {
        let fd = Glibc.socket(domain, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), proto)
        guard fd >= 0 else { throw SyscallError("socket", errno) }
        return fd
    }

    public static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) throws {
        var v = value
        guard setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw SyscallError("setsockopt(\(level),\(name))", errno)
        }
    }

    public static func bind(_ fd: Int32, _ addr: SocketAddress) throws {
        var a = addr
        guard a.withSockaddr({ Glibc.bind(fd, $0, $1) }) == 0 else { throw SyscallError("bind(\(addr))", errno) }
    }

    public static func listen(_ fd: Int32, backlog: Int32 = 16) throws {
        guard Glibc.listen(fd, backlog) == 0 else { throw SyscallError("listen", errno) }
    }

    /// Non-blocking connect: returns true when connected at once, false when in progress (EINPROGRESS).
    public static func connect(_ fd: Int32, _ addr: SocketAddress) throws -> Bool {
        var a = addr
        let r = a.withSockaddr { sa, len in retryEINTR { Glibc.connect(fd, sa, len) } }
        if r == 0 { return true }
        if errno == EINPROGRESS { return false }
        throw SyscallError("connect(\(addr))", errno)
    }

    /// The pending error of a socket (SO_ERROR), 0 when none.
    public static func socketError(_ fd: Int32) -> Int32 {
        var v: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &len) == 0 else { return errno }
        return v
    }

    /// accept(2), non-blocking and close-on-exec. The error carries its errno (EAGAIN when nothing waits;
    /// see `Epoll.pauseListenerIfShort` for the ones that mean fds ran out).
    public static func accept(_ fd: Int32) throws(SyscallError) -> Int32 {
        let r = vnet_accept_nonblocking(fd)
        guard r >= 0 else { throw SyscallError("accept", errno) }
        return r
    }

    /// accept(2) returning the peer's address too.
    public static func accept(_ fd: Int32, from: inout SocketAddress) throws(SyscallError) -> Int32 {
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &from.storage) { sp in
            sp.withMemoryRebound(to: sockaddr.self, capacity: 1) { vnet_accept_from(fd, $0, &len) }
        }
        guard r >= 0 else { throw SyscallError("accept", errno) }
        from.length = len
        return r
    }

    public static func localAddress(_ fd: Int32) -> SocketAddress? {
        var a = SocketAddress()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &a.storage) { sp in
            sp.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard r == 0 else { return nil }
        a.length = len
        return a
    }
}

extension Sys {
    /// bind(2) with mode 0600 for unix sockets.
    public static func bindPrivate(_ fd: Int32, _ addr: SocketAddress) throws {
        var a = addr
        let r = a.withSockaddr { vnet_bind_private(fd, $0, $1) }
        guard r == 0 else { throw SyscallError("bind(\(addr))", -r) }
    }

    /// stat(2) identity of a file: (device, inode, size, mtime ns), or nil when missing.
    public static func fileIdentity(_ path: String) -> [UInt64]? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return [UInt64(st.st_dev), UInt64(st.st_ino), UInt64(st.st_size),
                UInt64(st.st_mtim.tv_sec) &* 1_000_000_000 &+ UInt64(st.st_mtim.tv_nsec)]
    }

    public static func errnoString(_ e: Int32) -> String { String(cString: strerror(e)) }

    /// A non-blocking, close-on-exec eventfd (a wake-up counter for another thread).
    public static func eventFD() throws(SyscallError) -> Int32 {
        let e = vnet_eventfd()
        guard e >= 0 else { throw SyscallError("eventfd", errno) }
        return e
    }

    /// Adds one to an eventfd's counter (wakes whoever polls it).
    public static func signalEvent(_ fd: Int32) {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { b in retryEINTR { Glibc.write(fd, b.baseAddress, 8) } }
    }

    /// Reads and clears an eventfd's counter.
    public static func clearEvent(_ fd: Int32) {
        var counter: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &counter) { b in retryEINTR { Glibc.read(fd, b.baseAddress, 8) } }
    }

    /// A connected pair of unix sockets of `type`, both close-on-exec; the first non-blocking when asked.
    public static func socketPair(_ type: Int32, nonBlockingFirst: Bool = false) throws(SyscallError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else { throw SyscallError("socketpair", errno) }
        if nonBlockingFirst {
            let flags = fcntl(fds[0], F_GETFL)
            guard flags >= 0, fcntl(fds[0], F_SETFL, flags | O_NONBLOCK) == 0 else {
                let e = errno
                Glibc.close(fds[0]); Glibc.close(fds[1])
                throw SyscallError("fcntl(O_NONBLOCK)", e)
            }
        }
        return (fds[0], fds[1])
    }

    /// An fd handed over by an embedder: made non-blocking and close-on-exec.
    public static func adopt(_ fd: Int32) throws(SyscallError) {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) >= 0 else { throw SyscallError("fcntl(\(fd))", errno) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }
}

extension Sys {
    /// Socket buffer sizes; the FORCE options pass net.core.[rw]mem_max when permitted (root or
    /// CAP_NET_ADMIN), the plain ones otherwise.
    public static func setBufferSizes(_ fd: Int32, send: Int32, receive: Int32) {
        for (option, force, size) in [(SO_SNDBUF, SO_SNDBUFFORCE, send), (SO_RCVBUF, SO_RCVBUFFORCE, receive)] {
            var v = size
            if setsockopt(fd, SOL_SOCKET, force, &v, socklen_t(4)) != 0 {
                _ = setsockopt(fd, SOL_SOCKET, option, &v, socklen_t(4))
            }
        }
    }
}
