// The plug-in point for transports (PortTransport.swift), exercised through a real `SwitchRuntime` with its
// gateway: a transport made here (one end of a datagram socket pair, one frame per datagram) registers its
// own fd, delivers an ARP request, and the gateway's reply comes back through the port's queue and `flush`.
// Two ports offering the same control command are asked in turn.

import Foundation
import Logging
import Testing
import VNetBuffers
import VNetGateway
import VNetHost
@testable import VNetRuntime
import VNetSwitch
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

final class SocketPairTransport: PortTransport {
    let fd: Int32
    let name: String
    var context: PortContext?
    var frames = PortCounters()
    var buffer = [UInt8](repeating: 0, count: 2048)
    init(fd: Int32, name: String) { self.fd = fd; self.name = name }
    var typeName: String { "socketpair" }
    var description: String { "socketpair \(name)" }
    var isConnected: Bool { true }
    func start(_ context: PortContext) throws {
        self.context = context
        try context.register(fd, events: Epoll.readable, token: 7)
        context.peerConnected(name)
    }
    func handle(token: Int, events: UInt32, now: UInt64) {
        precondition(token == 7)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            guard n > 0 else { break }
            frames.framesIn &+= 1
            buffer.withUnsafeBytes { context?.deliver(UnsafeRawBufferPointer(rebasing: $0[0 ..< n]), offload: nil) }
        }
        context?.deliveredBatch()
    }
    func flush(now: UInt64) -> Bool {
        guard let q = context?.queue else { return false }
        while let f = q.firstFrame {
            _ = send(fd, f.baseAddress, f.count, Int32(MSG_DONTWAIT))
            frames.framesOut &+= 1
            q.removeFirstFrame()
        }
        return false
    }
    var counters: PortCounters { frames }
    var extraCounters: [(String, UInt64)] { [("socketpair_marker", 42)] }
    var controlCommands: [TransportCommand] {
        [TransportCommand("socketpair-name", help: "name=N: answers when N is this port's") { [name] a in
            guard try a.string("name") == name else { return nil }
            return ControlResult(value: name, text: "it is \(name)")
        }]
    }
    func close() { Glibc.close(fd) }
}

struct SocketPairFactory: PortTransportFactory {
    let fd: Int32
    let name: String
    var description: String { "socketpair \(name)" }
    var carriesOffloads: Bool { false }
    func make(logger: Logger) throws -> PortTransport { SocketPairTransport(fd: fd, name: name) }
}

@Suite struct PortTransportTests {
    static func pair() -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &fds) == 0)
        return (fds[0], fds[1])
    }

    @Test func aTransportReachesTheGatewayAndItsCommandsAreMerged() throws {
        let (a, aPeer) = Self.pair()
        let (b, bPeer) = Self.pair()
        defer { Glibc.close(aPeer); Glibc.close(bPeer) }
        var options = SwitchOptions()
        options.gateway = GatewayConfig()
        options.handleSignals = false
        options.announce = false
        options.ports = [SwitchPortSpec(endpoint: .transport(PluggedTransport(SocketPairFactory(fd: a, name: "a")))),
                         SwitchPortSpec(endpoint: .transport(PluggedTransport(SocketPairFactory(fd: b, name: "b"))))]
        let runtime = try SwitchRuntime(options: options, logger: Logger(label: "test"))

        // Commands: one entry for the shared name; each port answers for itself; nobody answers for "c".
        let commands = runtime.controlCommands.filter { $0.name == "socketpair-name" }
        #expect(commands.count == 1)
        #expect(try commands[0].run(ControlArguments(["name": "b"])).text == "it is b")
        #expect(throws: ControlError.self) { try commands[0].run(ControlArguments(["name": "c"])) }
        #expect(runtime.counterLines.contains { $0.hasSuffix("_socketpair_marker 42") })

        nonisolated(unsafe) let loopOwned = runtime
        let ended = DispatchSemaphore(value: 0)
        Thread { try? loopOwned.run(); ended.signal() }.start()
        defer {
            _ = runtime.commands.post { $0.stop() }
            ended.wait()
        }

        // An ARP request for the gateway from port a's guest.
        var frame = [UInt8](repeating: 0xff, count: 6) + [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06]
        frame += [0, 1, 8, 0, 6, 4, 0, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2]
        frame += [UInt8](repeating: 0, count: 60 - frame.count)
        #expect(send(aPeer, frame, frame.count, 0) == frame.count)

        var reply = [UInt8](repeating: 0, count: 2048)
        var pfd = pollfd(fd: aPeer, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 10_000) == 1)
        let n = recv(aPeer, &reply, reply.count, 0)
        #expect(n >= 42)
        let arp = try reply.withUnsafeBytes { try ARPPacket.parse(UnsafeRawBufferPointer(rebasing: $0[14 ..< n])) }
        #expect(arp.operation == .reply)
        #expect(arp.senderIP == IPv4Address(10, 0, 2, 2))
        #expect(arp.targetIP == IPv4Address(10, 0, 2, 15))
        // The broadcast was flooded to port b too (the switch, not the transport, decides).
        pfd = pollfd(fd: bPeer, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 10_000) == 1)
    }
}
