// Child processes: `vnet run` starts QEMU and outlives it; the control client talks to a running vnet.
//
// Theory of Operation
// -------------------
// A child is started with posix_spawn-like semantics (CVNetShim's `vnet_spawn_process`) and watched through
// its pidfd, which the event loop treats as a stop watch: readable when the child exits. Its status is then
// read without blocking, or after a SIGTERM when vnet stops first. The control client is the one blocking
// socket vnet has: a unix stream connection with send and receive timeouts, used by `vnet ctl` outside any
// loop.

import CVNetShim
#if canImport(Glibc)
import Glibc
#endif

extension Sys {
    /// Starts `argv` as a child; returns its pidfd (or a negative errno) and sets `pid`.
    public static func spawn(_ argv: [String], pid: inout Int32) -> Int32 {
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArgs.append(nil)
        defer { for p in cArgs { free(p) } }
        return cArgs.withUnsafeMutableBufferPointer { vnet_spawn_process($0.baseAddress!, &pid) }
    }

    /// The first line `argv` prints on stdout (at most 255 bytes, stderr discarded), waiting for it to exit; nil
    /// when it cannot be started or prints nothing. For short control-plane probes such as `qemu --version`.
    public static func firstOutputLine(of argv: [String]) -> String? {
        let quoted = argv.map { "'" + String($0.flatMap { $0 == "'" ? Array("'\\''") : [$0] }) + "'" }
        guard let pipe = popen(quoted.joined(separator: " ") + " 2>/dev/null", "r") else { return nil }
        defer { pclose(pipe) }
        var line = [CChar](repeating: 0, count: 256)
        guard fgets(&line, Int32(line.count), pipe) != nil else { return nil }
        var rest = [CChar](repeating: 0, count: 256)
        while fgets(&rest, Int32(rest.count), pipe) != nil {}   // the rest, so the child never blocks on a full pipe
        let bytes = line.prefix { $0 != 0 && $0 != 0x0A }.map { UInt8(bitPattern: $0) }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }

    /// The child's exit status if it has exited (128 + signal when killed), nil while it runs, -1 when unknown.
    public static func childStatus(_ pid: Int32) -> Int? {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == 0 { return nil }
        if r < 0 { return -1 }
        // WIFEXITED / WEXITSTATUS / WTERMSIG by hand (the macros are not imported).
        if status & 0x7F == 0 { return Int((status >> 8) & 0xFF) }
        return 128 + Int(status & 0x7F)
    }

    /// Asks the child to stop (SIGTERM) and waits for its status.
    public static func terminateChild(_ pid: Int32) -> Int {
        kill(pid, SIGTERM)
        return Int(vnet_wait_child(pid))
    }

    /// A blocking unix stream connection to `path`, with `timeout` seconds on sends and receives.
    public static func connectBlocking(unixPath path: String, timeout: Int) throws -> Int32 {
        guard let address = SocketAddress(unixPath: path) else { throw HostError("socket path too long: \(path)") }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SyscallError("socket", errno) }
        var a = address
        guard a.withSockaddr({ sa, len in retryEINTR { Glibc.connect(fd, sa, len) } }) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw HostError("cannot connect to \(path): \(errnoString(e))")
        }
        setTimeouts(fd, seconds: timeout)
        return fd
    }

    /// Send and receive timeouts of a blocking socket (0: wait for ever).
    public static func setTimeouts(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends all of `bytes` on a blocking socket (no SIGPIPE).
    public static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(SyscallError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { b in retryEINTR { Glibc.send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL)) } }
            guard n > 0 else { throw SyscallError("send", errno) }
            off += n
        }
    }
}
