// The slirp4netns API socket on `vnet user`'s loop: a unix stream listener (mode 0600) whose clients each send
// one request and get one reply (Slirp4netnsAPI.swift), then the connection is closed.
//
// Theory of operation: slirp4netns reads the request with one blocking read right after accept; vnet never
// blocks its loop, so an accepted client is watched until it is readable, then read once (at most 4096 bytes),
// answered with one send and closed. At most `clientCapacity` clients wait at once; one more pushes out the
// oldest (a client that connects and never writes cannot pin a slot). Forwards are added and removed through the
// runtime's own hostfwd listeners, with the same duplicate and sandbox checks as `vnet ctl hostfwd_add`.

import Logging
import VNetGateway
import VNetHost
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public final class Slirp4netnsAPIServer: Slirp4netnsForwarder {
    public static let clientCapacity = 32
    unowned let runtime: UserNetRuntime
    public private(set) var api: Slirp4netnsAPI
    let listenFD: Int32
    let path: String
    var clients: [(fd: Int32, slot: Int)] = []
    var buffer = [UInt8](repeating: 0, count: Slirp4netnsAPI.bufferSize)
    /// Clients pushed out before they sent anything.
    public private(set) var evictedClients: UInt64 = 0

    /// Listens at `path` (a stale socket there is replaced) and serves on the runtime's loop.
    public init(runtime: UserNetRuntime, path: String, defaultGuestAddress: IPv4Address) throws {
        self.runtime = runtime
        self.path = path
        api = Slirp4netnsAPI(defaultGuestAddress: defaultGuestAddress, dhcpStart: runtime.options.gateway.dhcpStart)
        listenFD = try Sys.listenUnix(path: path)
        try runtime.watch(listenFD) { [unowned self] in self.acceptClients() }
    }

    deinit {
        for c in clients { Sys.close(c.fd) }
        Sys.close(listenFD)
        if !runtime.sandboxed { Sys.unlink(path) }
    }

    func acceptClients() {
        for _ in 0 ..< 16 {
            guard let fd = try? Sys.accept(listenFD) else { return }
            if clients.count >= Slirp4netnsAPIServer.clientCapacity {
                let oldest = clients.removeFirst()
                runtime.unwatch(oldest.fd, slot: oldest.slot)
                Sys.close(oldest.fd)
                evictedClients &+= 1
            }
            do {
                let slot = try runtime.watch(fd) { [unowned self] in self.serve(fd) }
                clients.append((fd, slot))
            } catch {
                Sys.close(fd)
            }
        }
    }

    func serve(_ fd: Int32) {
        guard let k = clients.firstIndex(where: { $0.fd == fd }) else { return }
        let n = buffer.withUnsafeMutableBytes { b -> Int in
            let r = Glibc.read(fd, b.baseAddress, b.count)
            return r < 0 ? -Int(errno) : r
        }
        if n == -Int(EAGAIN) || n == -Int(EINTR) { return }
        let request = n > 0 ? Array(buffer[0 ..< n]) : []
        let reply = api.handle(request, forwarder: self)
        reply.withUnsafeBytes { b in
            var off = 0
            while off < b.count {
                let w = Glibc.send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                if w <= 0 { break }
                off += w
            }
        }
        shutdown(fd, Int32(SHUT_RDWR))
        runtime.unwatch(fd, slot: clients[k].slot)
        Sys.close(fd)
        clients.remove(at: k)
    }

    public func addForward(_ rule: HostForward) -> Int? {
        if runtime.forwards.clashes(with: rule) { runtime.logger.notice("api: hostfwd \(rule): port already forwarded"); return nil }
        if runtime.sandboxed, Int(rule.hostPort) < runtime.sandboxPortStart {
            runtime.logger.notice("api: hostfwd \(rule): below port \(runtime.sandboxPortStart) in the sandbox")
            return nil
        }
        do {
            let slot = try runtime.openForward(rule)
            runtime.logger.info("api: hostfwd added: \(rule)")
            return slot
        } catch {
            runtime.logger.notice("api: hostfwd \(rule): \(error)")
            return nil
        }
    }

    public func removeForward(_ handle: Int) {
        runtime.forwards.close(handle, gateway: runtime.gateway)
    }
}
