// Sysfs access behind a root path, so tests can point vnet at a tree of their own.
//
// Theory of Operation
// -------------------
// Every path is relative to `root` ("/sys" in real use). Reads are small and capped (sysfs attributes are
// at most a page). A write is one write(2) of the whole text, as sysfs wants; its errno is the kernel's
// answer (EBUSY, ENODEV, ...) and becomes a `KernelError`. `onWrite` is called after each successful write:
// a test uses it to play the kernel's part (moving a `driver` link when a driver binds), which a plain
// directory tree cannot do by itself.

#if canImport(Glibc)
import Glibc
#endif

public final class Sysfs {
    public let root: String
    public var onWrite: ((_ relativePath: String, _ text: String) -> Void)?

    public init(root: String = "/sys") {
        self.root = root.hasSuffix("/") && root.count > 1 ? String(root.dropLast()) : root
    }

    public func path(_ relative: String) -> String { root + "/" + relative }

    public func exists(_ relative: String) -> Bool { access(path(relative), F_OK) == 0 }

    /// Names in a directory (no "." or ".."), sorted; empty when it is missing.
    public func list(_ relative: String) -> [String] {
        guard let d = opendir(path(relative)) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// A small attribute's text with surrounding whitespace trimmed; nil when missing or unreadable.
    public func read(_ relative: String) -> String? {
        let fd = open(path(relative), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n >= 0 else { return nil }
        let text = String(decoding: buf[0 ..< n], as: UTF8.self)
        return String(text.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }

    /// The last path component of a symlink's target (a driver's or an IOMMU group's name); nil if no link.
    public func linkName(_ relative: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path(relative), &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let target = String(decoding: buf[0 ..< n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.split(separator: "/").last.map(String.init)
    }

    /// Writes `text` to an attribute in one write(2).
    public func write(_ relative: String, _ text: String, what: String) throws {
        let fd = open(path(relative), O_WRONLY | O_TRUNC | O_CLOEXEC)
        guard fd >= 0 else { throw KernelError("\(what) (open \(path(relative)))", errno: errno) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard n == bytes.count else { throw KernelError("\(what) (write \(path(relative)))", errno: n < 0 ? errno : EIO) }
        onWrite?(relative, text)
    }
}
