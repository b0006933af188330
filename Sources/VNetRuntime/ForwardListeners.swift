// Host listeners of forwards, for every mode: `vnet user`'s hostfwd rules and `vnet nat`'s port maps (and the
// library's port forwards, which are port maps).
//
// Theory of Operation
// -------------------
// Each rule gets a listening socket (TCP) or a bound socket (UDP) in a slot; the slot is the index of its
// epoll tag (`EventKind.forwardTCP`/`.forwardUDP`) and the handle a rule is removed by, and a removed rule
// leaves its slot empty for the next. Accepting is the same for every mode: up to 64 connections (or
// datagrams) per wake-up, each handed to the gateway with the guest address the owner resolves for the rule at
// that moment (a fixed address, or whichever VM holds a lease name now). A listener out of fds pauses instead
// of spinning (Epoll) and the pause is counted. Closing a listener leaves the connections it made running, as
// QEMU does; the UDP flows answering through it are forgotten.
// A rule may have a unix-socket host end instead (`hostfwd=unix:PATH-:PORT`, `--port-map unix:PATH-VM:PORT`):
// a unix stream listener at PATH, mode 0600 unless the rule says otherwise (a leftover socket nobody listens on
// is replaced, anything else at PATH refused), accepted like a TCP listener. A unix client has no address, so
// the guest sees it come from the gateway (as a loopback client), from a port taken in turn from 49152-65535.
// The file goes with the rule, and with the runtime (`removeSocketFiles`), unless the sandbox forbids unlink.

import CVNetShim
import VNetBuffers
import VNetGateway
import VNetHost
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

extension SocketAddress {
    /// The address and port of an IPv4 or IPv6 socket address (an IPv4-mapped IPv6 address as IPv4).
    var ipPeer: (IPAddress, UInt16)? {
        if let (v4, p) = ipv4 { return (IPAddress(IPv4Address(rawValue: v4)), p) }
        if let (v6, p) = ipv6 {
            let addr = IPv6Address(bytes: v6)
            return (addr.isIPv4Mapped ? IPAddress(IPv4Address(rawValue: UInt32(truncatingIfNeeded: addr.low))) : IPAddress(addr), p)
        }
        return nil
    }
}

final class ForwardListeners {
    struct Entry {
        var rule: HostForward
        var fd: Int32
        /// The address actually bound (port 0 becomes the kernel's choice).
        var bound: String
    }

    private(set) var entries: [Entry?] = []
    let epoll: Epoll
    /// Accepts that failed for want of fds (the listener paused).
    private(set) var acceptPauses: UInt64 = 0
    /// False once the sandbox forbids unlink: unix socket files then stay behind.
    var mayUnlink = true
    var nextUnixClientPort: UInt16 = 49152

    init(epoll: Epoll) { self.epoll = epoll }

    deinit { for case let e? in entries { Sys.close(e.fd) } }

    var active: [(slot: Int, entry: Entry)] { entries.enumerated().compactMap { i, e in e.map { (i, $0) } } }

    subscript(slot: Int) -> Entry? { slot >= 0 && slot < entries.count ? entries[slot] : nil }

    /// Binds the rule's socket (an address of 0.0.0.0 or :: binds every address of that family, as in QEMU;
    /// `[::]` is IPv6 only, so an IPv4 rule for the same port can sit beside it) and returns its slot.
    func open(_ rule: HostForward) throws -> Int {
        let slot = entries.firstIndex(where: { $0 == nil }) ?? entries.count
        if let path = rule.unixPath { return try openUnix(rule, path: path, slot: slot) }
        let tcp = rule.proto == .tcp
        let v6 = !rule.hostAddress.isIPv4
        let fd = try Sys.socket(v6 ? AF_INET6 : AF_INET, tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue), 0)
        do {
            try Sys.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            if v6 { try Sys.setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
            try Sys.bind(fd, RealHost.socketAddress(rule.hostAddress, port: rule.hostPort))
            if tcp { try Sys.listen(fd, backlog: 128) }
            try epoll.add(fd, events: Epoll.readable, tag: (tcp ? EventKind.forwardTCP : EventKind.forwardUDP).tag(slot))
        } catch {
            Sys.close(fd)
            throw error
        }
        let bound = Sys.localAddress(fd)?.ipPeer.map { "\($0.0.bracketed):\($0.1)" } ?? "\(rule.hostAddress.bracketed):\(rule.hostPort)"
        let entry = Entry(rule: rule, fd: fd, bound: bound)
        if slot == entries.count { entries.append(entry) } else { entries[slot] = entry }
        return slot
    }

    func openUnix(_ rule: HostForward, path: String, slot: Int) throws -> Int {
        let fd = try Sys.listenUnix(path: path)
        do {
            if rule.unixMode != 0o600, chmod(path, mode_t(rule.unixMode)) != 0 { throw SyscallError("chmod", errno) }
            try epoll.add(fd, events: Epoll.readable, tag: EventKind.forwardTCP.tag(slot))
        } catch {
            Sys.close(fd)
            Sys.unlink(path)
            throw error
        }
        let entry = Entry(rule: rule, fd: fd, bound: "unix:\(path)")
        if slot == entries.count { entries.append(entry) } else { entries[slot] = entry }
        return slot
    }

    /// Whether a listener in use already takes `rule`'s port: the same protocol, family and port, on the same
    /// address or where either side binds every address.
    func clashes(with rule: HostForward) -> Bool {
        guard rule.unixPath == nil else { return entries.contains { $0?.rule.unixPath == rule.unixPath } }
        return rule.hostPort != 0 && entries.contains { e in
            guard let f = e?.rule, f.unixPath == nil else { return false }
            return f.proto == rule.proto && f.hostPort == rule.hostPort && f.hostAddress.isIPv4 == rule.hostAddress.isIPv4
                && (f.hostAddress == rule.hostAddress || f.hostAddress.isUnspecified || rule.hostAddress.isUnspecified)
        }
    }

    /// Removes the socket files of the unix listeners (at exit).
    func removeSocketFiles() {
        guard mayUnlink else { return }
        for case let e? in entries { if let p = e.rule.unixPath { Sys.unlink(p) } }
    }

    /// The address and port a unix client appears from (loopback, so the guest sees the gateway).
    func unixClientEndpoint() -> (IPAddress, UInt16) {
        let p = nextUnixClientPort
        nextUnixClientPort = p == 65535 ? 49152 : p + 1
        return (IPAddress(IPv4Address(127, 0, 0, 1)), p)
    }

    /// Closes the listener in `slot`; returns what it was.
    @discardableResult
    func close(_ slot: Int, gateway: Gateway<RealHost>?) -> Entry? {
        guard let e = self[slot] else { return nil }
        epoll.remove(e.fd)
        if e.rule.proto == .udp { gateway?.forgetForwardedUDP(listener: e.fd) }
        Sys.close(e.fd)
        if let p = e.rule.unixPath, mayUnlink { Sys.unlink(p) }
        entries[slot] = nil
        return e
    }

    /// Serves the listener in `slot`: connections and datagrams go to the guest address `target` gives for the
    /// rule now; with none (no VM holds the name), a connection is refused and `unresolved` told.
    func accept(_ slot: Int, gateway: Gateway<RealHost>, now: UInt64, target: (HostForward) -> IPAddress?, unresolved: (HostForward) -> Void = { _ in }) {
        guard let e = self[slot] else { return }
        let instant = Instant(nanoseconds: now)
        let to = target(e.rule)
        if e.rule.proto == .tcp {
            for _ in 0 ..< 64 {
                var from = SocketAddress()
                let c: Int32
                do throws(SyscallError) { c = try Sys.accept(e.fd, from: &from) } catch {
                    if epoll.pauseListenerIfShort(e.fd, error: error.errno, tag: EventKind.forwardTCP.tag(slot)) { acceptPauses &+= 1 }
                    return
                }
                guard let to, let (a, p) = e.rule.unixPath == nil ? from.ipPeer : unixClientEndpoint(),
                      gateway.acceptForwardedTCP(handle: c, from: a, port: p, to: to, port: e.rule.guestPort, now: instant) else {
                    if to == nil { unresolved(e.rule) }
                    vnet_abort_close(c)
                    continue
                }
            }
        } else {
            for _ in 0 ..< 64 {
                var from = SocketAddress()
                let buf = gateway.forwardReceiveBuffer
                guard case .done(let n) = Sys.receiveFrom(e.fd, into: buf, from: &from) else { return }
                guard n <= buf.count, let to, let (a, p) = from.ipPeer else { continue }
                gateway.forwardedUDPDatagram(listener: e.fd, from: a, port: p, to: to, port: e.rule.guestPort, length: n, now: instant)
            }
        }
    }
}
