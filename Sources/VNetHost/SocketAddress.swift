// A socket address (IPv4 or unix path) in a sockaddr_storage, built and printed without Foundation.

import CVNetShim
#if canImport(Glibc)
import Glibc
#endif

public struct SocketAddress: CustomStringConvertible {
    public var storage = sockaddr_storage()
    public var length: socklen_t = 0

    public init() {}

    /// IPv4: `address` in host order.
    public init(ipv4 address: UInt32, port: UInt16) {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = address.bigEndian
        withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: sin) { dst.copyMemory(from: $0) } }
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
    }

    /// IPv6: the address as 16 network-order bytes.
    public init(ipv6 bytes: [UInt8], port: UInt16) {
        precondition(bytes.count == 16)
        let n = withUnsafeMutableBytes(of: &storage) { dst in
            bytes.withUnsafeBufferPointer { vnet_sockaddr_in6(dst.baseAddress, $0.baseAddress, port) }
        }
        length = socklen_t(n)
    }

    /// For AF_INET6: (16 network-order address bytes, port).
    public var ipv6: (address: [UInt8], port: UInt16)? {
        guard family == AF_INET6 else { return nil }
        return withUnsafeBytes(of: storage) { raw in
            let sin6 = raw.loadUnaligned(as: sockaddr_in6.self)
            let bytes = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
            return (bytes, UInt16(bigEndian: sin6.sin6_port))
        }
    }

    /// A unix socket path; nil when the path does not fit sun_path.
    public init?(unixPath path: String) {
        var sun = sockaddr_un()
        sun.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let cap = MemoryLayout.size(ofValue: sun.sun_path)
        guard !bytes.isEmpty, bytes.count < cap else { return nil }
        withUnsafeMutableBytes(of: &sun.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: sun) { dst.copyMemory(from: $0) } }
        length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
    }

    public var family: Int32 { Int32(storage.ss_family) }

    /// For AF_INET: (address in host order, port).
    public var ipv4: (address: UInt32, port: UInt16)? {
        guard family == AF_INET else { return nil }
        return withUnsafeBytes(of: storage) { raw in
            let sin = raw.loadUnaligned(as: sockaddr_in.self)
            return (UInt32(bigEndian: sin.sin_addr.s_addr), UInt16(bigEndian: sin.sin_port))
        }
    }

    public var unixPath: String? {
        guard family == AF_UNIX, length > socklen_t(MemoryLayout<sa_family_t>.size) else { return nil }
        return withUnsafeBytes(of: storage) { raw in
            let start = MemoryLayout<sa_family_t>.size
            var bytes: [UInt8] = []
            for i in start ..< Int(length) { let b = raw[i]; if b == 0 { break }; bytes.append(b) }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    mutating func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        let len = length
        return withUnsafePointer(to: &storage) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, len) } }
    }

    public var description: String {
        if let (a, p) = ipv4 { return "\(a >> 24).\((a >> 16) & 0xFF).\((a >> 8) & 0xFF).\(a & 0xFF):\(p)" }
        if let (a, p) = ipv6 {
            var groups: [String] = []
            for i in stride(from: 0, to: 16, by: 2) { groups.append(String(UInt16(a[i]) << 8 | UInt16(a[i + 1]), radix: 16)) }
            return "[\(groups.joined(separator: ":"))]:\(p)"
        }
        if let path = unixPath { return "unix:\(path)" }
        return "(unnamed)"
    }
}
