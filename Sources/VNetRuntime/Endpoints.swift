// Opening the sockets a port listens, connects or receives on: the same for `vnet user`'s one guest and for the
// switch's ports (`vnet switch`, `vnet nat`, the library).
//
// Each opener checks its address first (a clear `--flag: …` error, never a trap), binds, and returns the fd with
// the description start-up lines and `info network` print. Unix sockets are created with mode 0600 (bound
// under a umask, so there is no window with a wider mode); a leftover socket file nobody listens on is
// replaced, and anything else at the path is refused.

import VNetHost
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

enum Endpoints {
    /// A TCP listener for QEMU stream (or `-netdev socket,connect=`) clients.
    static func listenTCP(host: String, port: UInt16) throws -> (fd: Int32, description: String) {
        guard let a = IPv4Address(host) else { throw RuntimeError("--listen: '\(host)' is not an IPv4 address") }
        let fd = try Sys.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        do {
            try Sys.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            try Sys.bind(fd, SocketAddress(ipv4: a.rawValue, port: port))
            try Sys.listen(fd)
        } catch {
            Sys.close(fd)
            throw error
        }
        return (fd, "tcp:\(Sys.localAddress(fd)?.description ?? "\(host):\(port)")")
    }

    /// The address of a listening QEMU (`server=on`) to connect to.
    static func connectAddress(unixPath path: String) throws -> SocketAddress {
        guard let a = SocketAddress(unixPath: path) else { throw RuntimeError("--connect: unix path too long") }
        return a
    }

    static func connectAddress(host: String, port: UInt16) throws -> SocketAddress {
        guard let a = IPv4Address(host) else { throw RuntimeError("--connect: '\(host)' is not an IPv4 address") }
        return SocketAddress(ipv4: a.rawValue, port: port)
    }

    /// A unix datagram socket for `-netdev dgram` (or vfkit) peers, with room for bursts of frames.
    static func bindDatagram(unixPath path: String, flag: String) throws -> Int32 {
        try Sys.removeStaleSocket(path)
        guard let a = SocketAddress(unixPath: path) else { throw RuntimeError("\(flag): unix path too long") }
        let fd = try Sys.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        do { try Sys.bindPrivate(fd, a) } catch {
            Sys.close(fd)
            throw error
        }
        datagramBuffers(fd)
        return fd
    }

    /// A UDP socket for `-netdev dgram` peers over UDP.
    static func bindDatagram(host: String, port: UInt16) throws -> (fd: Int32, description: String) {
        guard let a = IPv4Address(host) else { throw RuntimeError("--dgram: '\(host)' is not an IPv4 address") }
        let fd = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        do { try Sys.bind(fd, SocketAddress(ipv4: a.rawValue, port: port)) } catch {
            Sys.close(fd)
            throw error
        }
        datagramBuffers(fd)
        return (fd, "dgram udp:\(Sys.localAddress(fd)?.description ?? "\(host):\(port)")")
    }

    /// 1 MiB to send and 4 MiB to receive: a guest's burst of frames waits in the socket, not on the floor.
    static func datagramBuffers(_ fd: Int32) {
        try? Sys.setOption(fd, SOL_SOCKET, SO_SNDBUF, 1 << 20)
        try? Sys.setOption(fd, SOL_SOCKET, SO_RCVBUF, 4 << 20)
    }
}
