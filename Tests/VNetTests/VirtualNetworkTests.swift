// The library API end to end, in process: datagram-pair "VMs" the test drives frame by frame (DHCP, ARP,
// ICMP echo to each other and to the gateway), lease events as an AsyncStream, port forwards, a vfkit-style
// unixgram client, and a graceful ServiceGroup shutdown. Every wait has a deadline.

import Foundation
import Logging
import ServiceLifecycle
import Testing
import VNet
#if canImport(Glibc)
import Glibc
#endif

/// A network on its own subnet, running in a task until `stop`.
final class RunningNetwork: @unchecked Sendable {
    let network: VirtualNetwork
    let task: Task<Void, Error>

    init(subnet: IPv4Subnet = "10.77.0.0/24", configure: (inout VirtualNetwork.Configuration) -> Void = { _ in }) throws {
        var c = VirtualNetwork.Configuration()
        c.subnet = subnet
        c.upstreamDNS = ["127.0.0.1"]
        configure(&c)
        var logger = Logger(label: "vnet-test")
        logger.logLevel = .warning
        let n = try VirtualNetwork(configuration: c, logger: logger)
        network = n
        task = Task { try await n.run() }
    }

    func stop() async throws {
        network.shutdown()
        try await task.value
    }

    deinit { network.shutdown() }   // a test that threw half-way still stops its loop
}

@Suite("VirtualNetwork")
struct VirtualNetworkTests {
    @Test("two datagram-pair VMs get leases, resolve each other with ARP and ping each other and the gateway")
    func twoVMs() async throws {
        let net = try RunningNetwork()
        let events = net.network.leaseEvents()
        let a = try await net.network.attachDatagramPair(mac: EthernetAddress("52:54:00:00:00:0a")!)
        let b = try await net.network.attachDatagramPair()
        let vmA = TestVM(fd: a.fileDescriptor, mac: a.mac)
        let vmB = TestVM(fd: b.fileDescriptor, mac: b.mac)
        #expect(a.mac.description == "52:54:00:00:00:0a")
        #expect(a.port != b.port)

        #expect(await vmA.dhcp(hostName: "alpha"))
        #expect(await vmB.dhcp(hostName: "beta"))
        #expect(vmA.ip != vmB.ip && vmA.ip.first == 10 && vmB.ip.first == 10)
        #expect(vmA.gatewayIP == [10, 77, 0, 1])

        // Lease events: one grant per VM, in order.
        var granted: [Lease] = []
        for await e in events {
            if case .granted(let l) = e { granted.append(l) }
            if granted.count == 2 { break }
        }
        #expect(granted.map(\.mac) == [vmA.mac, vmB.mac])
        #expect(granted.first?.hostName == "alpha")
        let leases = try await net.network.leases()
        #expect(Set(leases.map(\.mac)) == [vmA.mac, vmB.mac])

        // A resolves B (B answers the flooded request), then pings it; B answers the ping.
        async let answered = vmB.answerARP()
        let bMAC = await vmA.arp(vmB.ip)
        #expect(await answered)
        #expect(bMAC == Frames.macBytes(vmB.mac))
        vmA.send(Frames.icmpEcho(reply: false, from: vmA.mac, to: bMAC ?? [], src: vmA.ip, dst: vmB.ip, id: 0x4242, seq: 1))
        let request = await vmB.receive { TestVM.isEcho($0, reply: false, from: vmA.ip, id: 0x4242) }
        #expect(request != nil)
        vmB.send(Frames.icmpEcho(reply: true, from: vmB.mac, to: Frames.macBytes(vmA.mac), src: vmB.ip, dst: vmA.ip, id: 0x4242, seq: 1))
        #expect(await vmA.receive { TestVM.isEcho($0, reply: true, from: vmB.ip, id: 0x4242) } != nil)

        // The gateway answers ARP and echo for its own address.
        let gwMAC = await vmB.arp(vmB.gatewayIP)
        #expect(gwMAC != nil)
        vmB.send(Frames.icmpEcho(reply: false, from: vmB.mac, to: gwMAC ?? [], src: vmB.ip, dst: vmB.gatewayIP, id: 0x77, seq: 1))
        #expect(await vmB.receive { TestVM.isEcho($0, reply: true, from: vmB.gatewayIP, id: 0x77) } != nil)

        // Per-port stats and the MAC table saw both VMs.
        let stats = try await net.network.portStatistics()
        #expect(stats.contains { $0.port == a.port && $0.rxPackets >= 4 && $0.txPackets >= 3 })
        #expect(stats.contains { $0.isGateway })
        let table = try await net.network.macTable()
        #expect(table.contains { $0.mac == vmA.mac && $0.port == a.port })
        #expect(table.contains { $0.mac == vmB.mac && $0.port == b.port })
        try await net.stop()
    }

    @Test("lease events follow guests as they come and go")
    func leaseEventsComeAndGo() async throws {
        let net = try RunningNetwork(subnet: "10.78.0.0/24")
        let events = net.network.leaseEvents()
        let a = try await net.network.attachDatagramPair()
        let vm = TestVM(fd: a.fileDescriptor, mac: a.mac)
        #expect(await vm.dhcp())
        vm.release()
        var seen: [String] = []
        for await e in events {
            switch e {
            case .granted(let l): seen.append("granted \(l.mac) \(l.address)")
            case .released(let l): seen.append("released \(l.mac) \(l.address)")
            }
            if seen.count == 2 { break }
        }
        let address = vm.ip.map(String.init).joined(separator: ".")
        #expect(seen == ["granted \(vm.mac) \(address)", "released \(vm.mac) \(address)"])
        #expect(try await net.network.detach(a.port))
        #expect(try await net.network.portStatistics().allSatisfy { $0.port != a.port })

        // A new guest comes: a new grant arrives on the same stream.
        let b = try await net.network.attachDatagramPair()
        let vm2 = TestVM(fd: b.fileDescriptor, mac: b.mac)
        #expect(await vm2.dhcp())
        for await e in events {
            if case .granted(let l) = e { #expect(l.mac == vm2.mac); break }
        }
        try await net.stop()
        // The stream finishes when the network stops.
        var after = 0
        for await _ in events { after += 1 }
        #expect(after == 0)
    }

    @Test("attach(fd:framing:) with QEMU's stream framing and with TAP framing (one frame per read and write)")
    func attachFramings() async throws {
        let net = try RunningNetwork(subnet: "10.88.0.0/24")
        // TAP framing over a SOCK_SEQPACKET pair: one frame per read and write, like a TAP fd.
        var t: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &t) == 0)
        try await net.network.attach(fd: t[0], framing: .tap, name: "tap-like")
        let tapVM = TestVM(fd: t[1], mac: .random())
        #expect(await tapVM.dhcp())

        // vfkit framing over a connected datagram pair: the VFKT datagram first, not counted as a bad frame.
        var v: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &v) == 0)
        let vport = try await net.network.attach(fd: v[0], framing: .vfkit, name: "vfkit fd")
        let vfkitVM = TestVM(fd: v[1], mac: .random())
        vfkitVM.send(Array("VFKT".utf8))
        #expect(await vfkitVM.dhcp())
        #expect(try await net.network.portStatistics().first { $0.port == vport }?.rxDrops == 0)

        // QEMU stream framing over a stream pair: a 4-byte big-endian length before each frame.
        var s: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &s) == 0)
        try await net.network.attach(fd: s[0], framing: .qemuStream)
        defer { close(s[1]) }
        let mac = EthernetAddress.random()
        let discover = Frames.dhcp(.discover, mac: mac, xid: 0x5151, hostName: "streamer")
        let framed = Frames.be16(0) + Frames.be16(UInt16(discover.count)) + discover
        #expect(framed.withUnsafeBytes { Glibc.send(s[1], $0.baseAddress, $0.count, 0) } == framed.count)
        var got: [UInt8] = []
        let offered = await eventually {
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { recv(s[1], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 { got += buf[0 ..< n] }
            guard got.count >= 4 else { return false }
            let length = Int(got[2]) << 8 | Int(got[3])
            guard got.count >= 4 + length else { return false }
            return Frames.parseDHCPReply(Array(got[4 ..< 4 + length]))?.xid == 0x5151
        }
        #expect(offered)
        try await net.stop()
    }

    @Test("a VM that closes its end of the pair is removed from the switch")
    func closedPairIsRemoved() async throws {
        let net = try RunningNetwork(subnet: "10.87.0.0/24")
        let a = try await net.network.attachDatagramPair()
        do {
            let vm = TestVM(fd: a.fileDescriptor, mac: a.mac)
            #expect(await vm.dhcp())
        }   // the VM's fd closes here
        // A datagram socket learns that its peer closed when it next sends to it: a broadcast from another VM.
        let b = try await net.network.attachDatagramPair()
        let other = TestVM(fd: b.fileDescriptor, mac: b.mac)
        other.send(Frames.arpRequest(from: other.mac, ip: [10, 87, 0, 99], target: [10, 87, 0, 98]))
        let gone = try await eventually { try await net.network.portStatistics().allSatisfy { $0.port != a.port } }
        #expect(gone)
        try await net.stop()
    }

    @Test("a lease that expires is reported as released")
    func expiryIsReported() async throws {
        let net = try RunningNetwork(subnet: "10.86.0.0/24") { $0.leaseSeconds = 2 }
        let events = net.network.leaseEvents()
        let a = try await net.network.attachDatagramPair()
        let vm = TestVM(fd: a.fileDescriptor, mac: a.mac)
        #expect(await vm.dhcp())
        let deadline = Task { try await Task.sleep(nanoseconds: 15_000_000_000); net.network.shutdown() }   // never hang
        var released: Lease? = nil
        for await e in events {
            if case .released(let l) = e { released = l; break }
        }
        deadline.cancel()
        #expect(released?.mac == vm.mac)
        try await net.stop()
    }

    @Test("static leases at run time, DNS records")
    func staticLeasesAndDNS() async throws {
        let net = try RunningNetwork(subnet: "10.79.0.0/24")
        let mac = EthernetAddress("52:54:00:12:34:56")!
        try await net.network.addStaticLease(StaticLease(mac: mac, address: "10.79.0.42", hostName: "fixed"))
        await #expect(throws: VirtualNetworkError.self) {
            try await net.network.addStaticLease(StaticLease(mac: mac, address: "10.80.0.1"))
        }
        let a = try await net.network.attachDatagramPair(mac: mac)
        let vm = TestVM(fd: a.fileDescriptor, mac: mac)
        #expect(await vm.dhcp())
        #expect(vm.ip == [10, 79, 0, 42])
        #expect(try await net.network.removeStaticLease(mac: mac))

        try await net.network.addDNSRecord(DNSRecord(name: "db.test", type: .a, value: "10.79.0.42"))
        #expect(try await net.network.dnsRecords().contains { $0.name == "db.test" && $0.value == "10.79.0.42" })
        #expect(try await net.network.removeDNSRecords(name: "db.test") == 1)
        try await net.stop()
    }

    @Test("port forwards: add (TCP and UDP), list, remove; IPv6 on either side")
    func portForwards() async throws {
        let net = try RunningNetwork(subnet: "10.81.0.0/24")
        let tcp = try await net.network.addPortForward(PortForward(.tcp, hostPort: 0, guest: .address("10.81.0.10"), guestPort: 80))
        let udp = try await net.network.addPortForward(PortForward(.udp, hostPort: 0, guest: .hostName("web"), guestPort: 53))
        #expect(tcp.hostPort != 0 && udp.hostPort != 0)
        let listed = try await net.network.portForwards()
        #expect(listed == [tcp, udp])

        // The TCP forward's host port accepts connections while it exists.
        #expect(canConnect(port: tcp.hostPort))
        #expect(try await net.network.removePortForward(tcp))
        #expect(try await net.network.portForwards() == [udp])
        #expect(!canConnect(port: tcp.hostPort))
        #expect(try await !net.network.removePortForward(tcp))

        // IPv6 on the host side, the guest's IPv4 address on the other; and an IPv4 listener to a guest's IPv6 address.
        let v6 = try await net.network.addPortForward(PortForward(.tcp, hostAddress: "::1", hostPort: 0, guest: .address("10.81.0.10"), guestPort: 22))
        #expect(v6.hostPort != 0 && v6.hostAddress == "::1")
        #expect(canConnect6(port: v6.hostPort))
        let to6 = try await net.network.addPortForward(PortForward(.tcp, hostPort: 0, guest: .address("fec0::5054:ff:fe00:10"), guestPort: 22))
        #expect(try await net.network.portForwards().contains(to6))
        #expect(try await net.network.removePortForward(v6))
        #expect(!canConnect6(port: v6.hostPort))
        try await net.stop()
    }

    @Test("a vfkit client: unixgram, the VFKT handshake datagram first, then one frame per datagram")
    func vfkitClient() async throws {
        let net = try RunningNetwork(subnet: "10.82.0.0/24")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = dir + "/vnet.sock"
        try await net.network.listen(unixPath: server, framing: .vfkit)

        // As vfkit does: bind a path of its own, connect to the network's socket, send "VFKT".
        var clients: [TestVM] = []
        for i in 0 ..< 2 {
            let (fd, _) = try boundUnixgram(in: dir, name: "vfkit-\(i).sock")
            #expect(connectUnix(fd, to: server))
            let vm = TestVM(fd: fd, mac: .random())
            vm.send(Array("VFKT".utf8))
            clients.append(vm)
        }
        for vm in clients { #expect(await vm.dhcp()) }
        #expect(clients[0].ip != clients[1].ip)
        // The handshake is not a frame: no short-frame drop was counted for it.
        let counters = try await net.network.counters()
        #expect(!counters.contains { $0.name.hasSuffix("drop_frame_too_short") && $0.value > 0 })
        #expect(try await net.network.portStatistics().filter { $0.name.contains("vfkit") }.count == 2)
        try await net.stop()
        #expect(access(server, F_OK) != 0)   // the socket file is removed at stop
    }

    @Test("attachDatagramPair sets 1 MiB send and 4 MiB receive buffers")
    func bufferSizes() async throws {
        let net = try RunningNetwork(subnet: "10.83.0.0/24")
        let a = try await net.network.attachDatagramPair()
        defer { close(a.fileDescriptor) }
        var snd: Int32 = 0, rcv: Int32 = 0
        var len = socklen_t(4)
        getsockopt(a.fileDescriptor, SOL_SOCKET, SO_SNDBUF, &snd, &len)
        len = 4
        getsockopt(a.fileDescriptor, SOL_SOCKET, SO_RCVBUF, &rcv, &len)
        // Linux reports twice the size set (bookkeeping overhead). Without CAP_NET_ADMIN, [rw]mem_max caps it.
        if geteuid() == 0 {
            #expect(snd == 2 << 20)
            #expect(rcv == 8 << 20)
        } else {
            #expect(snd > 0 && rcv > 0)
        }
        try await net.stop()
    }

    @Test("a ServiceGroup's graceful shutdown stops the network; calls after that fail cleanly")
    func serviceGroupShutdown() async throws {
        var logger = Logger(label: "vnet-test")
        logger.logLevel = .warning
        var c = VirtualNetwork.Configuration()
        c.subnet = "10.84.0.0/24"
        let network = try VirtualNetwork(configuration: c, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: network)], logger: logger))
        let run = Task { try await group.run() }
        let a = try await network.attachDatagramPair()
        let vm = TestVM(fd: a.fileDescriptor, mac: a.mac)
        #expect(await vm.dhcp())
        await group.triggerGracefulShutdown()
        try await run.value
        await #expect(throws: VirtualNetworkError.notRunning) { try await network.run() }
    }

    @Test("bad configurations are refused with one clear error")
    func badConfiguration() throws {
        var c = VirtualNetwork.Configuration()
        c.subnet = "10.85.0.0/24"
        c.gateway = "10.86.0.1"
        #expect(throws: VirtualNetworkError.self) { try VirtualNetwork(configuration: c, logger: Logger(label: "t")) }
        c.gateway = nil
        c.mtu = 100
        #expect(throws: VirtualNetworkError.self) { try VirtualNetwork(configuration: c, logger: Logger(label: "t")) }
        c.mtu = 1500
        c.dhcpRange = "10.85.0.1" ... "10.85.0.20"   // contains the gateway
        #expect(throws: VirtualNetworkError.self) { try VirtualNetwork(configuration: c, logger: Logger(label: "t")) }
        let v6 = "fd00::1", slash31 = "10.0.0.0/31"
        #expect(IPAddress(v6)?.family == .ipv6)
        #expect(IPv4Subnet(slash31) == nil)
    }
}

func canConnect(port: UInt16) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
}

func canConnect6(port: UInt16) -> Bool {
    let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in6()
    a.sin6_family = sa_family_t(AF_INET6)
    a.sin6_port = port.bigEndian
    a.sin6_addr.__in6_u.__u6_addr8.15 = 1   // ::1
    return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } } == 0
}
