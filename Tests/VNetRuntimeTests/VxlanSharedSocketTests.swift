// Two VXLAN uplinks (VNIs) on one local port share one receive socket: each datagram reaches the uplink of its
// VNI, and when the uplink that reads the socket closes, the other keeps it (registered under its own tag).

import Glibc
import Logging
import Testing
@testable import VNetBuffers
@testable import VNetHost
@testable import VNetRuntime
import VNetWire

@Suite struct VxlanSharedSocketTests {
    final class Sink {
        var frames: [Int: Int] = [:]
    }

    static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(2), 0)
        defer { Glibc.close(fd) }
        var a = SocketAddress(ipv4: IPv4Address(127, 0, 0, 1).rawValue, port: 0)
        _ = withUnsafePointer(to: &a.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, a.length) } }
        return try #require(Sys.localAddress(fd)?.ipv4?.port)
    }

    static func send(vni: UInt32, from: IPv4Address, to port: UInt16) {
        let fd = socket(AF_INET, Int32(2), 0)
        defer { Glibc.close(fd) }
        var me = SocketAddress(ipv4: from.rawValue, port: 0)
        _ = withUnsafePointer(to: &me.storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, me.length) } }
        var d = [UInt8](repeating: 0, count: 8 + 60)
        d.withUnsafeMutableBytes { p in
            VXLANHeader(vni: vni).emit(into: p)
            MACAddress.broadcast.write(to: p, at: 8)
            MACAddress(0x52, 0x54, 0, 0, 0x40, UInt8(vni)).write(to: p, at: 14)
            p.put16(20, 0x0806)
        }
        _ = d.withUnsafeBytes { Sys.sendTo(fd, $0, SocketAddress(ipv4: IPv4Address(127, 0, 0, 1).rawValue, port: port)) }
    }

    @Test func ownershipMovesWhenTheReaderCloses() throws {
        let epoll = try Epoll()
        let port = try Self.freePort()
        let sink = Sink()
        var ports: [VxlanPort] = []
        for (slot, vni) in [(1, UInt32(1)), (2, UInt32(2))] {
            let u = try VxlanUplink.parse("\(vni),local=127.0.0.1:\(port),remote=127.0.0.\(1 + vni)")
            let p = try #require(try u.make(logger: Logger(label: "test")) as? VxlanPort)
            let c = PortContext(queue: FrameQueue(capacity: 1 << 17), mtu: 1500, logger: Logger(label: "test"), epoll: epoll, slot: slot,
                                deliver: { _, _ in sink.frames[slot, default: 0] += 1 }, endBatch: {}, peerNews: { _, _, _ in })
            try p.start(c)
            ports.append(p)
        }
        #expect(ports[0].receiveFD == ports[1].receiveFD)
        Self.send(vni: 2, from: IPv4Address(127, 0, 0, 3), to: port)
        Self.send(vni: 1, from: IPv4Address(127, 0, 0, 2), to: port)
        ports[0].handle(token: 0, events: Epoll.readable, now: 1)
        #expect(sink.frames == [1: 1, 2: 1])

        ports[0].close()
        Self.send(vni: 2, from: IPv4Address(127, 0, 0, 3), to: port)
        var tags: [UInt64] = []
        try epoll.wait(timeoutMilliseconds: 1000) { tag, _ in tags.append(tag) }
        #expect(tags == [PortContext.tag(slot: 2, token: 0)])
        ports[1].handle(token: 0, events: Epoll.readable, now: 2)
        #expect(sink.frames[2] == 2)
        ports[1].close()
    }
}
