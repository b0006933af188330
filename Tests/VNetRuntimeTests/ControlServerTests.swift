// The control socket over a real unix socket and a real epoll set: mode 0600, one reply per request line,
// over-long lines and garbage answered without disturbing other clients, many clients at once, a cap,
// events only to subscribers.

import Foundation
import Testing
@testable import VNetRuntime
import VNetHost
#if canImport(Glibc)
import Glibc
#endif

/// A server on its own epoll set, pumped by the test (single thread, as in the runtime).
final class ServerRig {
    let epoll: Epoll
    let server: ControlServer
    let target = FakeTarget()
    let dir: String
    var path: String { dir + "/ctl.sock" }

    init(clientLimit: Int = ControlServer.maximumClients) throws {
        var template = Array("/tmp/vnet-ctl-XXXXXX".utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        epoll = try Epoll()
        server = try ControlServer(path: dir + "/ctl.sock", epoll: epoll, listenerTag: 1 << 56, clientTag: 2 << 56, target: target,
                               clientLimit: clientLimit)
    }

    deinit {
        unlink(path)
        rmdir(dir)
    }

    func pump(milliseconds: Int32 = 5) {
        try? epoll.wait(timeoutMilliseconds: milliseconds) { tag, events in
            self.server.handle(tag: tag, events: events, isListener: tag >> 56 == 1)
        }
    }

    /// Pumps until `done` or the deadline; returns whether `done` held.
    func pump(until done: () -> Bool, seconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if done() { return true }
            pump()
        }
        return done()
    }

    /// A new client, accepted before this returns (the listen backlog is small).
    func connect() throws -> TestClient {
        let before = server.clientCount + Int(server.rejectedClients)
        let c = try TestClient(path: path)
        #expect(pump(until: { self.server.clientCount + Int(self.server.rejectedClients) > before }))
        return c
    }
}

/// A non-blocking client that collects reply lines.
final class TestClient {
    let fd: Int32
    var received: [UInt8] = []
    var closed = false

    init(path: String) throws {
        fd = try Sys.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        _ = try Sys.connect(fd, SocketAddress(unixPath: path)!)
    }

    deinit { Sys.close(fd) }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let r = bytes.withUnsafeBytes { Sys.send(fd, UnsafeRawBufferPointer(rebasing: $0[off...])) }
            guard case .done(let n) = r else { return }
            off += n
        }
    }

    func poll() {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let r = buf.withUnsafeMutableBytes { Sys.read(fd, into: $0) }
            switch r {
            case .done(let n): received += buf[0 ..< n]
            case .closed: closed = true; return
            default: return
            }
        }
    }

    var lines: [[UInt8]] { received.split(separator: 10, omittingEmptySubsequences: true).map(Array.init) }

    func replies() -> [[String: Any]] {
        lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any] }
    }
}

@Suite("Control server", .serialized)
struct ControlServerTests {
    @Test("the socket has mode 0600 and is removed with the server")
    func mode() throws {
        let path = "/tmp/vnet-ctl-mode-\(getpid()).sock"
        do {
            let server = try ControlServer(path: path, epoll: try Epoll(), listenerTag: 1 << 56, clientTag: 2 << 56, target: FakeTarget())
            var st = stat()
            #expect(lstat(path, &st) == 0)
            #expect(st.st_mode & 0o777 == 0o600)
            #expect(server.clientCount == 0)
        }
        var st = stat()
        #expect(lstat(path, &st) != 0)
    }

    @Test("requests split across writes, several per write, CRLF and blank lines: one reply per request, in order")
    func framing() throws {
        let rig = try ServerRig()
        let c = try rig.connect()
        c.send(#"{"execute": "echo", "argu"#)
        rig.pump()
        c.send("ments\": {\"text\": \"1\"}}\n\n   \n{\"execute\": \"echo\", \"arguments\": {\"text\": \"2\"}}\r\n{\"execute\":\"echo\",\"arguments\":{\"text\":\"3\"}}\n")
        #expect(rig.pump(until: { c.poll(); return c.lines.count >= 3 }))
        let texts = c.replies().compactMap { ($0["return"] as? [String: Any])?["text"] as? String }
        #expect(texts == ["1", "2", "3"])
    }

    @Test("an over-long line gets one error and is skipped; the same connection then works")
    func overlong() throws {
        let rig = try ServerRig()
        let c = try rig.connect()
        let long = [UInt8](repeating: UInt8(ascii: "a"), count: ControlServer.maximumLineLength * 3)
        c.send(long)
        rig.pump()
        c.send([10] + Array(#"{"execute": "echo", "arguments": {"text": "after"}}"#.utf8) + [10])
        #expect(rig.pump(until: { c.poll(); return c.lines.count >= 2 }))
        let r = c.replies()
        #expect(r.count == 2)
        #expect(errorOf(r[0])?.1.contains("longer than") == true)
        #expect((r[1]["return"] as? [String: Any])?["text"] as? String == "after")
        #expect(!c.closed)
    }

    @Test("garbage from one client never disturbs another")
    func isolation() throws {
        let rig = try ServerRig()
        let bad = try rig.connect()
        let good = try rig.connect()
        #expect(rig.pump(until: { rig.server.clientCount == 2 }))
        var rng = SystemRandomNumberGenerator()
        var garbage = (0 ..< 20_000).map { _ in UInt8.random(in: 0 ... 255, using: &rng) }
        garbage.append(10)
        bad.send(garbage)
        bad.send("{\"execute\": \"echo\"\n")   // truncated JSON
        good.send(#"{"execute": "echo", "arguments": {"text": "fine"}}"# + "\n")
        #expect(rig.pump(until: { good.poll(); return good.lines.count >= 1 }))
        #expect((good.replies().first?["return"] as? [String: Any])?["text"] as? String == "fine")
        #expect(rig.pump(until: { bad.poll(); return bad.replies().count >= 2 }))
        #expect(bad.replies().allSatisfy { errorOf($0) != nil })
        #expect(rig.server.clientCount == 2)
    }

    @Test("100 clients at once each get their own answer")
    func manyClients() throws {
        let rig = try ServerRig()
        var clients: [TestClient] = []
        for _ in 0 ..< 100 { clients.append(try rig.connect()) }
        #expect(rig.pump(until: { rig.server.clientCount == 100 }))
        for (i, c) in clients.enumerated() { c.send(#"{"execute": "echo", "arguments": {"text": "c\#(i)"}, "id": \#(i)}"# + "\n") }
        #expect(rig.pump(until: { clients.allSatisfy { c in c.poll(); return c.lines.count >= 1 } }))
        for (i, c) in clients.enumerated() {
            let r = c.replies()
            #expect(r.count == 1 && r[0]["id"] as? Int == i && (r[0]["return"] as? [String: Any])?["text"] as? String == "c\(i)")
        }
    }

    @Test("past the cap a client is told so and closed; the others go on")
    func cap() throws {
        let rig = try ServerRig()
        var clients: [TestClient] = []
        for _ in 0 ..< ControlServer.maximumClients { clients.append(try rig.connect()) }
        #expect(rig.server.clientCount == ControlServer.maximumClients)
        let extra = try rig.connect()
        #expect(rig.pump(until: { extra.poll(); return extra.closed }))
        #expect(errorOf(extra.replies().first ?? [:])?.1.contains("too many") == true)
        #expect(rig.server.rejectedClients == 1)
        clients[0].send(#"{"execute": "echo", "arguments": {"text": "still"}}"# + "\n")
        #expect(rig.pump(until: { clients[0].poll(); return clients[0].lines.count == 1 }))
    }

    @Test("--limit control-clients sets the cap, and the refusal names the knob")
    func configuredCap() throws {
        let rig = try ServerRig(clientLimit: 3)
        var clients: [TestClient] = []
        for _ in 0 ..< 3 { clients.append(try rig.connect()) }
        #expect(rig.pump(until: { rig.server.clientCount == 3 }))
        let extra = try rig.connect()
        #expect(rig.pump(until: { extra.poll(); return extra.closed }))
        let message = errorOf(extra.replies().first ?? [:])?.1 ?? ""
        #expect(message.contains("at most 3") && message.contains("--limit control-clients"), "\(message)")
        #expect(rig.server.rejectedClients == 1 && rig.server.clientCount == 3)
        // A slot freed by a client that leaves is taken by the next one.
        clients.removeFirst()   // its deinit closes the socket
        #expect(rig.pump(until: { rig.server.clientCount == 2 }))
        let late = try rig.connect()
        late.send(#"{"execute": "echo", "arguments": {"text": "in"}}"# + "\n")
        #expect(rig.pump(until: { late.poll(); return late.lines.count == 1 }))
        #expect(rig.server.rejectedClients == 1)
    }

    @Test("events reach subscribed clients only, in QMP's shape")
    func events() throws {
        let rig = try ServerRig()
        let listener = try rig.connect()
        let other = try rig.connect()
        listener.send(#"{"execute": "events"}"# + "\n")
        #expect(rig.pump(until: { listener.poll(); return listener.lines.count == 1 }))
        #expect(rig.server.subscriberCount == 1)
        rig.server.publish("PORT_CONNECTED", data: ["port": "guest0"])
        #expect(rig.pump(until: { listener.poll(); return listener.lines.count == 2 }))
        let e = listener.replies()[1]
        #expect(e["event"] as? String == "PORT_CONNECTED")
        #expect((e["data"] as? [String: Any])?["port"] as? String == "guest0")
        #expect((e["timestamp"] as? [String: Any])?["seconds"] is Int)
        rig.pump(milliseconds: 20)
        other.poll()
        #expect(other.lines.isEmpty)
    }

    @Test("a client that disconnects mid-request is forgotten")
    func disconnect() throws {
        let rig = try ServerRig()
        do {
            let c = try rig.connect()
            c.send(#"{"execute": "ec"#)
            rig.pump()
        }
        #expect(rig.pump(until: { rig.server.clientCount == 0 }))
    }
}
