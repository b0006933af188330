// The TFTP server's files on the host: a read-only view of one directory (`tftp=DIR`).
//
// Theory of Operation
// -------------------
// The gateway's TFTP server has already refused names that are absolute or hold `..`, backslashes or control
// bytes (`TFTPPath.isAcceptable`), so a name can only go outside the root through a symlink. Each open
// therefore resolves root + name with realpath(3), which follows every symlink, and serves the file only when
// the resolved path lies strictly under the root's own resolved path; a symlink that stays inside the root is
// fine. The resolved path is then opened O_RDONLY|O_NOFOLLOW|O_NONBLOCK and must be a regular file (fstat), so
// devices, FIFOs and directories are refused too.
//
// Why realpath and not openat2(RESOLVE_BENEATH): openat2 needs Linux 5.6 and a raw syscall that Glibc does
// not wrap, and seccomp'd containers often refuse it. The realpath check leaves one race: someone who can
// write inside the root on the host could swap a directory for a symlink between realpath and open. O_NOFOLLOW
// closes it for the last component; for directories above it, that person already controls what is served.
// Reads are pread(2) at most one block each, so an open file never moves under concurrent transfers.

import Glibc
import VNetServices

public final class HostTFTPFiles: TFTPFileSource {
    /// The root as realpath(3) resolved it, without a trailing slash (except for "/").
    public let root: String
    let rootPrefix: String

    /// Resolves `directory` (which must exist and be a directory).
    public init(directory: String) throws {
        guard let r = realpath(directory, nil) else {
            throw RuntimeError("tftp=\(directory): \(String(cString: strerror(errno)))")
        }
        root = String(cString: r)
        free(r)
        var st = stat()
        guard stat(root, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { throw RuntimeError("tftp=\(directory): not a directory") }
        rootPrefix = root == "/" ? "/" : root + "/"
    }

    public func open(_ path: String) -> TFTPOpenResult {
        guard TFTPPath.isAcceptable(path) else { return .accessDenied }
        guard let r = realpath(rootPrefix + path, nil) else { return errno == ENOENT || errno == ENOTDIR ? .notFound : .accessDenied }
        let resolved = String(cString: r)
        free(r)
        guard resolved.hasPrefix(rootPrefix), resolved.count > rootPrefix.count else { return .accessDenied }
        let fd = Glibc.open(resolved, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return errno == ENOENT ? .notFound : .accessDenied }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size >= 0 else {
            Glibc.close(fd)
            return .accessDenied
        }
        return .opened(handle: fd, size: UInt64(st.st_size))
    }

    public func read(_ handle: Int32, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard buffer.count > 0 else { return 0 }
        while true {
            let n = pread(handle, buffer.baseAddress, buffer.count, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { return nil }
        }
    }

    public func close(_ handle: Int32) { Glibc.close(handle) }
}
