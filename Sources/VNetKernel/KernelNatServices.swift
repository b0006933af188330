// DHCP and DNS forwarding on a kernel NAT bridge, over ordinary UDP sockets.
//
// Theory of Operation
// -------------------
// DHCP: a socket on 0.0.0.0:67 bound to the bridge (SO_BINDTODEVICE) hands each request to the same pure
// DHCPServer the user-mode gateway uses. Clients without an address get their replies by broadcast
// (255.255.255.255:68 out of the bridge), so no ARP entry has to be forced; a client that already has its
// address (renewal) gets a unicast reply.
//
// DNS: the forwarder at GATEWAY:53 (KernelNatDNS.swift): UDP and TCP, every upstream given, either family,
// with the same failover as the user-mode gateway's.
//
// The sockets are served on the one `EventLoop` (VNetHost), under the registry's `dhcpSocket` kind and the
// forwarder's kinds, beside whatever else the caller registered (the control socket); buffers are allocated
// once.

import CVNetShim
import VNetBuffers
import VNetHost
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public final class KernelNatServices {
    public struct Counters: Sendable {
        public var dhcpReplies = 0
        public var dhcpDropped = 0
        public var dnsForwarded = 0
        public var dnsAnswered = 0
        public var dnsDropped = 0
        public var dnsFailovers = 0
        public var dnsTCPRelayed = 0
        public var dnsTCPRefused = 0
    }

    var dhcp: DHCPServer
    let bridge: String
    let dhcpSocket: Int32
    let dns: KernelNatDNS?
    var serviceCounters = Counters()
    public var counters: Counters {
        var c = serviceCounters
        if let d = dns?.counters {
            c.dnsForwarded = d.forwarded; c.dnsAnswered = d.answered; c.dnsDropped = d.dropped
            c.dnsFailovers = d.failovers; c.dnsTCPRelayed = d.tcpRelayed; c.dnsTCPRefused = d.tcpRefused
        }
        return c
    }
    /// Called for every DHCP ACK that binds an address (for the control socket's LEASE_GRANTED event).
    public var onLease: ((IPv4Address, MACAddress) -> Void)?
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
    let replyBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1500, alignment: 8)

    /// `dnsUpstreams` empty: no DNS service (the DHCP replies still name the gateway).
    public init(bridge: String, dhcpConfig: DHCPConfig, gateway: IPv4Address, dnsUpstreams: [(IPAddress, UInt16)]) throws {
        self.bridge = bridge
        dhcp = DHCPServer(config: dhcpConfig)
        dhcpSocket = try Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try Sys.setOption(dhcpSocket, SOL_SOCKET, SO_REUSEADDR, 1)
        try Sys.setOption(dhcpSocket, SOL_SOCKET, SO_BROADCAST, 1)
        try Self.bindToDevice(dhcpSocket, bridge)
        do { try Sys.bind(dhcpSocket, SocketAddress(ipv4: 0, port: 67)) } catch let e as SyscallError {
            throw KernelError("listen for DHCP on \(bridge) (port 67)", errno: e.errno)
        }
        dns = dnsUpstreams.isEmpty ? nil : try KernelNatDNS(gateway: gateway, upstreams: dnsUpstreams)
    }

    deinit {
        Sys.close(dhcpSocket)
        buffer.deallocate()
        replyBuffer.deallocate()
    }

    static func bindToDevice(_ fd: Int32, _ name: String) throws {
        let r = name.withCString { setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, $0, socklen_t(strlen($0) + 1)) }
        guard r == 0 else { throw KernelError("bind the DHCP socket to \(name)", errno: errno) }
    }

    /// Serves on `loop` until it stops (a stop signal); returns the signal number. Events of other kinds (the
    /// control socket's) go to `other`.
    public func run(on loop: EventLoop, other: (EventKind, Int, UInt32) -> Void = { _, _, _ in }) throws -> Int32 {
        try loop.add(dhcpSocket, events: Epoll.readable, kind: .dhcpSocket)
        try dns?.register(on: loop)
        try loop.run(turn: { now in
            dns?.expire(now: now)
            return dns == nil ? nil : now + 1_000_000_000
        }, dispatch: { kind, index, events, now in
            switch kind {
            case .dhcpSocket: serveDHCP()
            case .dnsSocket: if index == 0 { dns?.forwardQueries(now: now) } else { dns?.acceptClients(now: now) }
            case .dnsUpstream: dns?.returnAnswers(from: index)
            case .dnsRelay: dns?.relayEvent(index, events: events, now: now)
            default: other(kind, index, events)
            }
        })
        return loop.stopSignal
    }

    /// Every binding the DHCP server knows, for status output.
    public var leases: [DHCPLease] { dhcp.leases(now: Instant(nanoseconds: Sys.monotonicNanoseconds())) }

    func serveDHCP() {
        var from = SocketAddress()
        while case .done(let n) = Sys.receiveFrom(dhcpSocket, into: buffer, from: &from) {
            guard n <= buffer.count, let m = try? DHCPMessage.parse(UnsafeRawBufferPointer(rebasing: buffer[0 ..< n])) else {
                serviceCounters.dhcpDropped += 1
                continue
            }
            let now = Instant(nanoseconds: Sys.monotonicNanoseconds())
            guard case .reply(let reply) = dhcp.handle(m, now: now, into: replyBuffer) else {
                serviceCounters.dhcpDropped += 1
                continue
            }
            let unicast = !reply.broadcast && !m.clientAddress.isUnspecified
            let to = SocketAddress(ipv4: unicast ? m.clientAddress.rawValue : 0xFFFF_FFFF, port: DHCPMessage.clientPort)
            if reply.type == .ack, !reply.yourAddress.isUnspecified { onLease?(reply.yourAddress, m.clientMAC) }
            if case .done = Sys.sendTo(dhcpSocket, UnsafeRawBufferPointer(rebasing: replyBuffer[0 ..< reply.length]), to) {
                serviceCounters.dhcpReplies += 1
            } else {
                serviceCounters.dhcpDropped += 1
            }
        }
    }
}
