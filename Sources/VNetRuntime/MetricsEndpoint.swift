// A tiny HTTP/1.x responder for Prometheus scrapes, served from the runtime's epoll loop (no NIO).
//
// Theory of Operation
// -------------------
// A TCP listener (loopback unless told otherwise). Each connection sends one request; once its header is
// complete (a blank line within `maximumRequest` bytes), `GET /metrics` (or `/`) is answered with
// `render()`'s text (Prometheus text format 0.0.4), anything else with 404 or 405, and the connection closes
// after the reply is written (`Connection: close`). At most `maximumClients` connections at once; more are
// closed at once. Everything is non-blocking: a reply that does not fit the socket waits for EPOLLOUT.

import CVNetShim
import VNetHost
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public final class MetricsEndpoint {
    static let maximumClients = 16
    static let maximumRequest = 8 * 1024

    final class Client {
        let fd: Int32
        var request: [UInt8] = []
        var reply: [UInt8] = []
        var sent = 0
        init(fd: Int32) { self.fd = fd }
    }

    let epoll: Epoll
    let listenFD: Int32
    let clientTag: UInt64
    let listenerTag: UInt64
    let render: () -> [UInt8]
    var clients: [Client?] = Array(repeating: nil, count: MetricsEndpoint.maximumClients)
    public let boundAddress: String
    public private(set) var scrapes: UInt64 = 0

    public init(host: String, port: UInt16, epoll: Epoll, listenerTag: UInt64, clientTag: UInt64, render: @escaping () -> [UInt8]) throws {
        guard let a = IPv4Address(host) else { throw RuntimeError("--metrics: '\(host)' is not an IPv4 address") }
        self.epoll = epoll
        self.listenerTag = listenerTag
        self.clientTag = clientTag
        self.render = render
        let fd = try Sys.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        do {
            try Sys.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            try Sys.bind(fd, SocketAddress(ipv4: a.rawValue, port: port))
            try Sys.listen(fd, backlog: 32)
            try epoll.add(fd, events: Epoll.readable, tag: listenerTag)
        } catch {
            Sys.close(fd)
            throw RuntimeError("--metrics \(host):\(port): \(error)")
        }
        listenFD = fd
        boundAddress = Sys.localAddress(fd)?.description ?? "\(host):\(port)"
    }

    deinit {
        for c in clients { if let c { Sys.close(c.fd) } }
        Sys.close(listenFD)
    }

    public func handle(tag: UInt64, events: UInt32, isListener: Bool) {
        if isListener {
            for _ in 0 ..< 16 {
                let fd: Int32
                do throws(SyscallError) { fd = try Sys.accept(listenFD) } catch {
                    epoll.pauseListenerIfShort(listenFD, error: error.errno, tag: listenerTag)
                    return
                }
                guard let slot = clients.firstIndex(where: { $0 == nil }),
                      (try? epoll.add(fd, events: Epoll.readable | Epoll.hangup, tag: clientTag | UInt64(slot))) != nil else {
                    Sys.close(fd)
                    continue
                }
                clients[slot] = Client(fd: fd)
            }
            return
        }
        let slot = Int(tag & 0x00FF_FFFF_FFFF_FFFF)
        guard slot < clients.count, let c = clients[slot] else { return }
        if !c.reply.isEmpty { return write(c, slot: slot) }
        var chunk = [UInt8](repeating: 0, count: 2048)
        while true {
            let r = chunk.withUnsafeMutableBytes { Sys.read(c.fd, into: $0) }
            switch r {
            case .done(let n):
                c.request += chunk[0 ..< n]
                if let reply = respond(c.request) {
                    c.reply = reply
                    return write(c, slot: slot)
                }
                if c.request.count > MetricsEndpoint.maximumRequest { return close(c, slot: slot) }
            case .wouldBlock:
                return
            case .closed, .failed:
                return close(c, slot: slot)
            }
        }
    }

    /// The reply once the request header is complete, else nil.
    func respond(_ request: [UInt8]) -> [UInt8]? {
        guard let end = request.indices.first(where: { i in
            i + 3 < request.count && request[i] == 13 && request[i + 1] == 10 && request[i + 2] == 13 && request[i + 3] == 10
        }) ?? request.indices.first(where: { i in i + 1 < request.count && request[i] == 10 && request[i + 1] == 10 }) else { return nil }
        let line = String(decoding: request[0 ..< end], as: UTF8.self).split(separator: "\n").first ?? ""
        let parts = line.split(separator: " ")
        guard parts.count >= 2 else { return MetricsEndpoint.reply(400, "Bad Request", body: Array("bad request\n".utf8)) }
        let path = parts[1].split(separator: "?").first.map(String.init) ?? ""
        guard parts[0] == "GET" || parts[0] == "HEAD" else { return MetricsEndpoint.reply(405, "Method Not Allowed", body: Array("GET only\n".utf8)) }
        guard path == "/metrics" || path == "/" else { return MetricsEndpoint.reply(404, "Not Found", body: Array("try /metrics\n".utf8)) }
        scrapes &+= 1
        let body = render()
        return MetricsEndpoint.reply(200, "OK", body: parts[0] == "HEAD" ? [] : body, length: body.count,
                                     type: "text/plain; version=0.0.4; charset=utf-8")
    }

    static func reply(_ code: Int, _ reason: String, body: [UInt8], length: Int? = nil, type: String = "text/plain; charset=utf-8") -> [UInt8] {
        let head = "HTTP/1.1 \(code) \(reason)\r\nContent-Type: \(type)\r\nContent-Length: \(length ?? body.count)\r\nConnection: close\r\n\r\n"
        return Array(head.utf8) + body
    }

    func write(_ c: Client, slot: Int) {
        while c.sent < c.reply.count {
            let r = c.reply.withUnsafeBytes { Sys.send(c.fd, UnsafeRawBufferPointer(rebasing: $0[c.sent...])) }
            switch r {
            case .done(let n): c.sent += n
            case .wouldBlock:
                try? epoll.modify(c.fd, events: Epoll.writable | Epoll.hangup, tag: clientTag | UInt64(slot))
                return
            case .closed, .failed:
                return close(c, slot: slot)
            }
        }
        shutdown(c.fd, Int32(SHUT_WR))
        close(c, slot: slot)
    }

    func close(_ c: Client, slot: Int) {
        epoll.remove(c.fd)
        Sys.close(c.fd)
        clients[slot] = nil
    }
}
