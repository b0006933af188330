// The control socket: a unix stream socket (mode 0600) served from the runtime's own epoll loop.
//
// Theory of Operation
// -------------------
// The runtime registers the listener under `listenerTag` and gives every event whose tag's top byte is
// `clientTag`'s to `handle(tag:events:)`; the low bits of a client's tag are its slot. Everything is
// non-blocking and bounded:
// - at most `maximumClients` connections; one more is told so (one error line) and closed;
// - a request line may be `maximumLineLength` bytes; a longer one gets an error reply and is skipped up to
//   its newline, the connection goes on;
// - each wakeup reads at most `readBudget` bytes from one client, so a flooding client cannot starve the
//   loop or the other clients;
// - replies and events wait in a per-client output buffer of at most `maximumPendingOutput` bytes: a client
//   that stops reading past that is disconnected (it is the one that misbehaves; nobody else waits for it).
// Requests are answered in order by `ControlDispatcher`. `publish` sends an event to the clients that asked
// for events (`{"execute": "events"}`).

import CVNetShim
import Foundation
import VNetHost
#if canImport(Glibc)
import Glibc
#endif

public final class ControlServer {
    public static let maximumClients = 128
    public static let maximumLineLength = 64 * 1024
    public static let maximumPendingOutput = 1 << 20
    static let readBudget = 256 * 1024

    final class Client {
        let fd: Int32
        var input: [UInt8] = []
        /// Skipping the rest of an over-long line.
        var discarding = false
        var output: [UInt8] = []
        var outputOffset = 0
        var subscribed = false
        var writeArmed = false
        init(fd: Int32) { self.fd = fd }
    }

    public let path: String
    let epoll: Epoll
    let listenFD: Int32
    let clientTag: UInt64
    let listenerTag: UInt64
    let dispatcher: ControlDispatcher
    var clients: [Client?]
    /// Connections at once (`--limit control-clients`, default `maximumClients`).
    public let clientLimit: Int
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    public private(set) var rejectedClients: UInt64 = 0
    public private(set) var requests: UInt64 = 0

    /// Binds `path` (a stale socket there is replaced; anything else is refused) and registers the listener.
    /// `clientTag` must have its low 56 bits zero.
    public init(path: String, epoll: Epoll, listenerTag: UInt64, clientTag: UInt64, target: ControlTarget,
                clientLimit: Int = ControlServer.maximumClients) throws {
        self.path = path
        self.clientLimit = max(1, clientLimit)
        clients = Array(repeating: nil, count: max(1, clientLimit))
        self.epoll = epoll
        self.clientTag = clientTag
        self.listenerTag = listenerTag
        dispatcher = ControlDispatcher(target: target)
        listenFD = try Sys.listenUnix(path: path)
        try epoll.add(listenFD, events: Epoll.readable, tag: listenerTag)   // on failure, deinit closes and unlinks
    }

    deinit {
        for c in clients { if let c { Sys.close(c.fd) } }
        Sys.close(listenFD)
        Sys.unlink(path)
        readBuffer.deallocate()
    }

    public var clientCount: Int { clients.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }
    public var subscriberCount: Int { clients.reduce(0) { $0 + ($1?.subscribed == true ? 1 : 0) } }

    /// An epoll event for the listener (`isListener`) or for the client whose slot is in the tag's low bits.
    public func handle(tag: UInt64, events: UInt32, isListener: Bool) {
        if isListener { return acceptClients() }
        let slot = Int(tag & 0x00FF_FFFF_FFFF_FFFF)
        guard slot < clients.count, let c = clients[slot] else { return }
        if events & Epoll.writable != 0 { flush(c, slot: slot) }
        guard clients[slot] === c else { return }
        if events & (Epoll.readable | Epoll.hangup | Epoll.error) != 0 { read(c, slot: slot) }
    }

    func acceptClients() {
        for _ in 0 ..< 64 {
            let fd: Int32
            do throws(SyscallError) { fd = try Sys.accept(listenFD) } catch {
                epoll.pauseListenerIfShort(listenFD, error: error.errno, tag: listenerTag)
                return
            }
            guard let slot = clients.firstIndex(where: { $0 == nil }) else {
                rejectedClients &+= 1
                let line = ControlDispatcher.encode(["error": ["class": "GenericError",
                                                               "desc": "too many control clients (at most \(clientLimit); --limit control-clients)"]])
                line.withUnsafeBytes { _ = Sys.send(fd, $0) }
                Sys.close(fd)
                continue
            }
            do {
                try epoll.add(fd, events: Epoll.readable | Epoll.hangup, tag: clientTag | UInt64(slot))
            } catch {
                Sys.close(fd)
                continue
            }
            clients[slot] = Client(fd: fd)
        }
    }

    func drop(_ c: Client, slot: Int) {
        epoll.remove(c.fd)
        Sys.close(c.fd)
        if clients[slot] === c { clients[slot] = nil }
    }

    func read(_ c: Client, slot: Int) {
        var budget = ControlServer.readBudget
        while budget > 0 {
            switch Sys.read(c.fd, into: readBuffer) {
            case .done(let n):
                budget -= n
                consume(UnsafeRawBufferPointer(rebasing: readBuffer[0 ..< n]), c, slot: slot)
                guard clients[slot] === c else { return }
                if n < readBuffer.count { return }
            case .wouldBlock:
                return
            case .closed, .failed:
                return drop(c, slot: slot)
            }
        }
    }

    /// Splits received bytes into lines and answers each complete one.
    func consume(_ bytes: UnsafeRawBufferPointer, _ c: Client, slot: Int) {
        var start = 0
        while start < bytes.count {
            guard let nl = bytes[start...].firstIndex(of: 10) else {
                let rest = bytes.count - start
                if c.discarding { return }
                if c.input.count + rest > ControlServer.maximumLineLength {
                    c.input.removeAll(keepingCapacity: false)
                    c.discarding = true
                    reply(lineTooLong(), c, slot: slot)
                    return
                }
                c.input.append(contentsOf: bytes[start...])
                return
            }
            if c.discarding {
                c.discarding = false
            } else if c.input.count + (nl - start) > ControlServer.maximumLineLength {
                c.input.removeAll(keepingCapacity: false)
                reply(lineTooLong(), c, slot: slot)
            } else {
                c.input.append(contentsOf: bytes[start ..< nl])
                var line = c.input
                c.input.removeAll(keepingCapacity: true)
                if line.last == 13 { line.removeLast() }
                if !line.allSatisfy({ $0 == 32 || $0 == 9 }) {
                    requests &+= 1
                    let outcome = dispatcher.respond(to: line)
                    if let s = outcome.subscribe { c.subscribed = s }
                    reply(outcome.reply, c, slot: slot)
                }
            }
            guard clients[slot] === c else { return }
            start = nl + 1
        }
    }

    func lineTooLong() -> [UInt8] {
        ControlDispatcher.encode(["error": ["class": "GenericError",
                                            "desc": "request line longer than \(ControlServer.maximumLineLength) bytes: skipped"]])
    }

    func reply(_ bytes: [UInt8], _ c: Client, slot: Int) {
        if c.output.count - c.outputOffset + bytes.count > ControlServer.maximumPendingOutput { return drop(c, slot: slot) }
        if c.outputOffset > 0 && c.outputOffset == c.output.count {
            c.output.removeAll(keepingCapacity: true)
            c.outputOffset = 0
        }
        c.output += bytes
        flush(c, slot: slot)
    }

    func flush(_ c: Client, slot: Int) {
        while c.outputOffset < c.output.count {
            let r = c.output.withUnsafeBytes { Sys.send(c.fd, UnsafeRawBufferPointer(rebasing: $0[c.outputOffset...])) }
            switch r {
            case .done(let n):
                c.outputOffset += n
            case .wouldBlock:
                if !c.writeArmed {
                    c.writeArmed = true
                    try? epoll.modify(c.fd, events: Epoll.readable | Epoll.writable | Epoll.hangup, tag: clientTag | UInt64(slot))
                }
                return
            case .closed, .failed:
                return drop(c, slot: slot)
            }
        }
        c.output.removeAll(keepingCapacity: true)
        c.outputOffset = 0
        if c.writeArmed {
            c.writeArmed = false
            try? epoll.modify(c.fd, events: Epoll.readable | Epoll.hangup, tag: clientTag | UInt64(slot))
        }
    }

    /// Sends an event to every subscribed client.
    /// The one shape of a port event in every mode: `PORT_CONNECTED` / `PORT_DISCONNECTED` with the port's
    /// name (`guest0`, `port3`), its index, its peer (an address, or the endpoint it came in on) and why.
    public func publishPort(name: String, index: Int, peer: String, connected: Bool, reason: String) {
        publish(connected ? "PORT_CONNECTED" : "PORT_DISCONNECTED", data: ["port": name, "index": index, "peer": peer, "reason": reason])
    }

    public func publish(_ name: String, data: [String: Any]) {
        guard clients.contains(where: { $0?.subscribed == true }) else { return }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let line = ControlDispatcher.event(name, data: data, now: now)
        for (slot, c) in clients.enumerated() where c?.subscribed == true { reply(line, c!, slot: slot) }
    }
}
