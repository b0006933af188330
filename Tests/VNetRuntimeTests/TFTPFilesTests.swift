// HostTFTPFiles against a real directory tree: files and in-root symlinks are served, anything that resolves
// outside the root (symlinks out, `..`, absolute names) or is not a regular file is refused.

import Foundation
import Testing
import VNetRuntime
import VNetServices

@Suite("TFTP host files")
struct TFTPFilesTests {
    /// root/{file, sub/inner, link-in -> sub/inner, link-out -> outside/secret, dirlink-out -> outside, sub-dir}
    /// next to outside/secret.
    func tree() throws -> (base: URL, files: HostTFTPFiles) {
        let fm = FileManager.default
        let base = fm.temporaryDirectory.appendingPathComponent("vnet-tftp-\(UUID().uuidString)")
        let root = base.appendingPathComponent("root")
        let outside = base.appendingPathComponent("outside")
        try fm.createDirectory(at: root.appendingPathComponent("sub"), withIntermediateDirectories: true)
        try fm.createDirectory(at: outside, withIntermediateDirectories: true)
        try Data("hello".utf8).write(to: root.appendingPathComponent("file"))
        try Data("inner".utf8).write(to: root.appendingPathComponent("sub/inner"))
        try Data("secret".utf8).write(to: outside.appendingPathComponent("secret"))
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("link-in").path, withDestinationPath: "sub/inner")
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("link-out").path, withDestinationPath: "../outside/secret")
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("abs-out").path,
                                  withDestinationPath: outside.appendingPathComponent("secret").path)
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("dirlink-out").path, withDestinationPath: outside.path)
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("self").path, withDestinationPath: ".")
        return (base, try HostTFTPFiles(directory: root.path))
    }

    func contents(_ files: HostTFTPFiles, _ path: String) -> String? {
        guard case .opened(let h, let size) = files.open(path) else { return nil }
        defer { files.close(h) }
        var buf = [UInt8](repeating: 0, count: Int(size))
        let n = buf.withUnsafeMutableBytes { files.read(h, offset: 0, into: $0) }
        return n.map { String(decoding: buf.prefix($0), as: UTF8.self) }
    }

    @Test("plain files, subdirectories and symlinks that stay inside the root are served")
    func inside() throws {
        let (base, files) = try tree()
        defer { try? FileManager.default.removeItem(at: base) }
        #expect(contents(files, "file") == "hello")
        #expect(contents(files, "sub/inner") == "inner")
        #expect(contents(files, "link-in") == "inner")
        #expect(contents(files, "self/file") == "hello")
        #expect(files.open("missing") == .notFound)
        #expect(files.open("file/x") == .notFound)
    }

    @Test("symlinks out of the root, traversal, absolute names, directories and devices are refused",
          arguments: ["link-out", "abs-out", "dirlink-out/secret", "../outside/secret", "sub/../../outside/secret",
                      "/etc/passwd", "a\\b", "sub", "self", "dirlink-out"])
    func outside(path: String) throws {
        let (base, files) = try tree()
        defer { try? FileManager.default.removeItem(at: base) }
        #expect(files.open(path) == .accessDenied)
    }

    @Test("a root that does not exist or is a file is refused at start-up")
    func badRoot() throws {
        let (base, _) = try tree()
        defer { try? FileManager.default.removeItem(at: base) }
        #expect(throws: (any Error).self) { try HostTFTPFiles(directory: base.appendingPathComponent("nope").path) }
        #expect(throws: (any Error).self) { try HostTFTPFiles(directory: base.appendingPathComponent("root/file").path) }
    }

    @Test("reads are positional and bounded by the buffer")
    func positional() throws {
        let (base, files) = try tree()
        defer { try? FileManager.default.removeItem(at: base) }
        guard case .opened(let h, let size) = files.open("file") else { Issue.record("not opened"); return }
        defer { files.close(h) }
        #expect(size == 5)
        var buf = [UInt8](repeating: 0, count: 2)
        #expect(buf.withUnsafeMutableBytes { files.read(h, offset: 3, into: $0) } == 2)
        #expect(buf == Array("lo".utf8))
        #expect(buf.withUnsafeMutableBytes { files.read(h, offset: 5, into: $0) } == 0)
    }
}
