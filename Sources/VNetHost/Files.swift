// Files and socket files: the few paths vnet reads and writes outside the data path.
//
// Theory of Operation
// -------------------
// Small text files (resolv.conf) are read whole up to a limit; state files (DHCP leases) are written
// atomically: a temporary file beside the target, written, fsynced, renamed over it, and the directory
// fsynced, so a crash leaves the old file or the new one, never half of one. Unix socket files are bound
// with mode 0600; a leftover socket file nothing listens on is removed before binding, and anything that
// is not a socket, or a socket someone still serves, is refused. Lines meant for a terminal or a pipe are
// written whole, with EINTR retried.

import CVNetShim
#if canImport(Glibc)
import Glibc
#endif

extension Sys {
    /// The bytes of a small file (at most `limit`), or nil when it cannot be opened.
    public static func readSmallFile(_ path: String, limit: Int = 1 << 20) -> [UInt8]? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let n = chunk.withUnsafeMutableBytes { b in retryEINTR { Glibc.read(fd, b.baseAddress, b.count) } }
            if n <= 0 { break }
            bytes += chunk[0 ..< n]
        }
        return bytes.count > limit ? Array(bytes[0 ..< limit]) : bytes
    }

    /// Replaces `path` with `bytes` atomically (temporary file, fsync, rename, directory fsync), mode `mode`.
    public static func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(SyscallError) {
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let tmp = (dir.isEmpty ? "/" : dir) + "/." + base + ".tmp\(getpid())"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SyscallError("open(\(tmp))", errno) }
        let written = bytes.withUnsafeBytes { writeAll(fd, $0) }
        let synced = written && fsync(fd) == 0
        let e = errno
        Glibc.close(fd)
        guard synced else { Glibc.unlink(tmp); throw SyscallError("write(\(tmp))", e) }
        guard Glibc.rename(tmp, path) == 0 else {
            let e = errno
            Glibc.unlink(tmp)
            throw SyscallError("rename(\(path))", e)
        }
        let d = Glibc.open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 { fsync(d); Glibc.close(d) }
    }

    /// Writes all of `buffer` to a blocking fd (EINTR retried); false when a write fails.
    @discardableResult
    public static func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < buffer.count {
            let n = retryEINTR { Glibc.write(fd, buffer.baseAddress! + off, buffer.count - off) }
            guard n > 0 else { return false }
            off += n
        }
        return true
    }

    /// One line (a newline added) written whole to `fd`: start-up lines, events, counters.
    public static func writeLine(_ fd: Int32, _ text: String) {
        var line = text
        line.append("\n")
        _ = line.withUTF8 { writeAll(fd, UnsafeRawBufferPointer($0)) }
    }

    public static func unlink(_ path: String) { _ = Glibc.unlink(path) }

    /// Removes a leftover unix socket at `path` if nothing listens on it; refuses to touch anything else.
    public static func removeStaleSocket(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw HostError("\(path) exists and is not a socket") }
        if let a = SocketAddress(unixPath: path), let probe = try? socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0) {
            defer { close(probe) }
            if (try? connect(probe, a)) != nil { throw HostError("\(path) is in use by another process") }
        }
        Glibc.unlink(path)
    }

    /// A listening unix stream socket at `path` (mode 0600), replacing a stale socket file.
    public static func listenUnix(path: String) throws -> Int32 {
        guard let a = SocketAddress(unixPath: path) else { throw HostError("socket path too long: \(path)") }
        try removeStaleSocket(path)
        let fd = try socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        do {
            try bindPrivate(fd, a)
            try listen(fd)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }
}

extension Sys {
    /// A new private directory from `template` (ending in XXXXXX), or nil.
    public static func makeTemporaryDirectory(_ template: String) -> String? {
        var t = Array(template.utf8CString)
        return t.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) }
    }

    public static func removeDirectory(_ path: String) { _ = rmdir(path) }
}
