// The public value types of VNet: configuration, framings, port forwards, DNS records, leases, statistics.
// They map onto VNetRuntime's `SwitchOptions` / `HostForward` and VNetGateway's config here, in one place.

import VNetGateway
import VNetRuntime
import VNetServices
import VNetSwitch
import VNetWire

extension VirtualNetwork {
    /// A network's addressing and limits.
    ///
    /// The defaults make `192.168.127.0/24` with the gateway (and its DNS) on `.1` and DHCP handing out
    /// `.2` to `.254`, and IPv6 in `fec0::/64` (as QEMU's user network): guests form their own addresses by SLAAC,
    /// the gateway is `PREFIX::2` (reaching host `::1`) and its DNS forwarder `PREFIX::3`.
    public struct Configuration: Sendable {
        /// The subnet (a /8 to a /30).
        public var subnet: IPv4Subnet = "192.168.127.0/24"
        /// The gateway's address; nil: the subnet's first host (`.1`).
        public var gateway: IPAddress? = nil
        /// The DNS server's address given over DHCP; nil: the gateway's.
        public var dns: IPAddress? = nil
        /// The first and last addresses DHCP hands out; nil: every host address but the gateway's.
        public var dhcpRange: ClosedRange<IPv4Host>? = nil
        /// The IPv6 prefix the gateway advertises (a /64 for SLAAC); nil: no IPv6 on the network.
        public var ipv6Prefix: IPv6Prefix? = "fec0::/64"
        /// The largest IP packet on the segment, 576 to 65520.
        public var mtu: Int = 1500
        /// How long a DHCP lease lasts, in seconds.
        public var leaseSeconds: UInt64 = 3600
        /// The DNS domain given over DHCP; lease host names also answer under it.
        public var domain: String? = nil
        /// DNS servers the gateway forwards to (port 53, in order, failing over); empty: the resolv.conf file's,
        /// re-read when it changes.
        public var upstreamDNS: [IPAddress] = []
        /// The resolver file read when ``upstreamDNS`` is empty.
        public var resolvConfPath: String = "/etc/resolv.conf"
        /// Fixed addresses for known MACs (inside the DHCP range).
        public var staticLeases: [StaticLease] = []
        /// Records the gateway's DNS answers from the start.
        public var dnsRecords: [DNSRecord] = []
        /// Port forwards opened at start.
        public var portForwards: [PortForward] = []
        /// Guest traffic to the gateway's address reaches the host's loopback (127.0.0.1).
        public var gatewayReachesHostLoopback = true
        /// Most ports (VMs plus the gateway) at once.
        public var maximumPorts: Int = 64
        /// A file where leases persist across restarts; nil: not kept.
        public var leasesFile: String? = nil

        /// The defaults; change the properties you need.
        public init() {}

        /// The switch and gateway options this configuration stands for.
        func switchOptions() throws -> SwitchOptions {
            guard (576 ... 65520).contains(mtu) else { throw VirtualNetworkError.invalid("mtu \(mtu): must be between 576 and 65520") }
            guard (2 ... 4096).contains(maximumPorts) else { throw VirtualNetworkError.invalid("maximumPorts \(maximumPorts): must be between 2 and 4096") }
            let (gw, first, last) = try addressing()
            var g = GatewayConfig()
            g.network = IPv4Network(address: IPv4Address(rawValue: subnet.base), prefixLength: subnet.prefixLength)
            g.gatewayAddress = IPv4Address(rawValue: gw)
            if let d = dns {
                guard let v = d.ipv4Value, subnet.contains(d) else { throw VirtualNetworkError.invalid("dns \(d): not an address of \(subnet)") }
                g.dnsAddress = IPv4Address(rawValue: v)
            } else {
                g.dnsAddress = g.gatewayAddress
            }
            g.dhcpStart = IPv4Address(rawValue: first)
            g.dhcpPoolSize = Int(last - first) + 1
            g.leaseTime = .seconds(leaseSeconds)
            g.domainName = domain
            g.mtu = mtu
            g.mapGatewayToHostLoopback = gatewayReachesHostLoopback
            if let p = ipv6Prefix {
                let net = IPv6Network(address: IPv6Address(bytes: p.address.bytes), prefixLength: p.prefixLength)
                g.ipv6Enabled = true
                g.ipv6Prefix = net
                g.ipv6GatewayAddress = net.address(withInterface: 2)
                g.ipv6DNSAddress = net.address(withInterface: 3)
            } else {
                g.ipv6Enabled = false
            }
            g.staticLeases = try staticLeases.map { try Configuration.check($0, first: first, last: last) }
            var o = SwitchOptions()
            o.mtu = mtu
            o.maximumPorts = maximumPorts
            o.gateway = g
            o.handleSignals = false
            o.announce = false
            o.leasesFile = leasesFile
            o.resolvConfPath = resolvConfPath
            if let up = upstreamDNS.first {
                o.dnsUpstream = (up.description, 53)
            }
            var check = LocalDNSRecords()
            for r in dnsRecords {
                do { try check.add(name: r.name, type: r.type.local, value: r.value, ttl: r.ttl) } catch {
                    throw VirtualNetworkError.invalid("DNS record \(r.name): \(error)")
                }
                o.dnsRecords.append((r.name, r.type.local, r.value))
            }
            o.portMaps = try portForwards.map { try $0.portMap() }
            return o
        }

        /// The gateway and the DHCP range, checked against the subnet (the derivation every NAT mode shares).
        func addressing() throws -> (gateway: UInt32, first: UInt32, last: UInt32) {
            var gw: IPv4Address? = nil
            if let g = gateway {
                guard let v = g.ipv4Value else { throw VirtualNetworkError.invalid("gateway \(g): not a host address of \(subnet)") }
                gw = IPv4Address(rawValue: v)
            }
            let range = dhcpRange.map { (IPv4Address(rawValue: $0.lowerBound.value), IPv4Address(rawValue: $0.upperBound.value)) }
            let net = IPv4Network(address: IPv4Address(rawValue: subnet.base), prefixLength: subnet.prefixLength)
            do {
                let a = try NetworkAddressing(network: net, gateway: gw, dhcpRange: range)
                return (a.gateway.rawValue, a.dhcpFirst.rawValue, a.dhcpLast.rawValue)
            } catch {
                throw VirtualNetworkError.invalid("\(error)")
            }
        }

        /// A static lease as the DHCP server takes it, checked against the range.
        static func check(_ s: StaticLease, first: UInt32, last: UInt32) throws -> DHCPStaticLease {
            guard !s.mac.isMulticast else { throw VirtualNetworkError.invalid("static lease \(s.mac): a group address") }
            guard let v = s.address.ipv4Value else { throw VirtualNetworkError.unsupported("static lease \(s.address): IPv6 is not supported yet") }
            guard (first ... last).contains(v) else {
                throw VirtualNetworkError.invalid("static lease \(s.address): outside the DHCP range")
            }
            var host: String? = nil
            if let h = s.hostName {
                guard let clean = DHCPServer.cleanHostName(h), clean == h.lowercased() else {
                    throw VirtualNetworkError.invalid("static lease host name '\(h)': letters, digits and '-' only")
                }
                host = clean
            }
            return DHCPStaticLease(mac: VNetWire.MACAddress(rawValue: s.mac.rawValue), address: IPv4Address(rawValue: v), hostName: host)
        }
    }
}

/// An IPv4 host address, ordered, for ``VirtualNetwork/Configuration/dhcpRange``.
public struct IPv4Host: Comparable, Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    let value: UInt32

    /// Parses dotted-quad text; nil for anything else (IPv6 included).
    public init?(_ text: String) {
        guard let a = IPAddress(text), let v = a.ipv4Value else { return nil }
        value = v
    }

    /// Parses a literal; a literal that is not an IPv4 address is a programming error.
    public init(stringLiteral value: String) {
        guard let h = IPv4Host(value) else { preconditionFailure("'\(value)' is not an IPv4 address") }
        self = h
    }

    /// Orders by numeric value.
    public static func < (a: IPv4Host, b: IPv4Host) -> Bool { a.value < b.value }

    /// Dotted-quad.
    public var description: String { IPAddress(ipv4Value: value).description }
}

/// How frames travel over a descriptor or a listening socket.
public enum Framing: Sendable, Equatable, CustomStringConvertible {
    /// One Ethernet frame per datagram (a socketpair, `-netdev dgram`, Virtualization.framework).
    case datagram
    /// QEMU's stream framing (`-netdev stream`, `-netdev socket`): a 4-byte big-endian length, then the frame.
    case qemuStream
    /// vfkit's unixgram framing: the peer's first datagram is the 4 bytes "VFKT", then one frame per datagram.
    case vfkit
    /// One frame per read and write, no header: a TAP fd opened without `IFF_VNET_HDR`.
    case tap

    var transport: FrameTransport {
        switch self {
        case .datagram: .datagram
        case .qemuStream: .qemuStream
        case .vfkit: .vfkit
        case .tap: .tap
        }
    }

    /// The framing's name.
    public var description: String {
        switch self {
        case .datagram: "datagram"
        case .qemuStream: "qemu-stream"
        case .vfkit: "vfkit"
        case .tap: "tap"
        }
    }
}

/// A port of the network's switch.
public struct PortID: Hashable, Sendable, CustomStringConvertible {
    /// The switch port's index (as `vnet ctl ports` prints it).
    public let rawValue: Int
    /// A port by index.
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// `portN`.
    public var description: String { "port\(rawValue)" }
}

/// A VM's end of a datagram socket pair, from ``VirtualNetwork/attachDatagramPair(mac:)``.
public struct DatagramAttachment: Sendable {
    /// The VM's end: a connected `SOCK_DGRAM` unix socket carrying one Ethernet frame per datagram. The
    /// caller owns it (hand it to `VZFileHandleNetworkDeviceAttachment`, or to a VM process).
    public let fileDescriptor: Int32
    /// The switch port of the network's end.
    public let port: PortID
    /// The MAC the VM's NIC should use.
    public let mac: EthernetAddress
}

/// A host address and port forwarded to a guest port.
public struct PortForward: Hashable, Sendable, CustomStringConvertible {
    /// TCP or UDP.
    public enum TransportProtocol: String, Sendable, Hashable {
        /// TCP: each accepted connection becomes a connection to the guest.
        case tcp
        /// UDP: each client address becomes a flow to the guest.
        case udp
    }

    /// Where forwarded traffic goes.
    public enum Guest: Hashable, Sendable, CustomStringConvertible {
        /// A fixed guest address.
        case address(IPAddress)
        /// Whichever guest holds this DHCP host name when a connection arrives.
        case hostName(String)

        /// The address or the name.
        public var description: String {
            switch self {
            case .address(let a): a.description
            case .hostName(let n): n
            }
        }
    }

    /// TCP or UDP.
    public var transportProtocol: TransportProtocol
    /// The host address to listen on (`0.0.0.0` for every IPv4 address).
    public var hostAddress: IPAddress
    /// The host port; 0 picks a free one (``VirtualNetwork/addPortForward(_:)`` returns it).
    public var hostPort: UInt16
    /// The guest it goes to.
    public var guest: Guest
    /// The guest's port.
    public var guestPort: UInt16

    /// A forward of `hostAddress:hostPort` to `guest:guestPort`.
    public init(_ transportProtocol: TransportProtocol = .tcp, hostAddress: IPAddress = "127.0.0.1", hostPort: UInt16,
                guest: Guest, guestPort: UInt16) {
        self.transportProtocol = transportProtocol
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.guest = guest
        self.guestPort = guestPort
    }

    /// `tcp 127.0.0.1:8080 -> 192.168.127.2:80`.
    public var description: String {
        let host = hostAddress.family == .ipv6 ? "[\(hostAddress)]" : hostAddress.description
        return "\(transportProtocol.rawValue) \(host):\(hostPort) -> \(guest):\(guestPort)"
    }

    func portMap() throws -> HostForward {
        guard guestPort > 0 else { throw VirtualNetworkError.invalid("port forward \(self): guest port 0") }
        let target: ForwardTarget
        switch guest {
        case .address(let a):
            target = .address(a.wire)
        case .hostName(let n):
            guard let clean = DHCPServer.cleanHostName(n), clean == n.lowercased() else {
                throw VirtualNetworkError.invalid("port forward \(self): '\(n)' is not a host name")
            }
            target = .hostName(clean)
        }
        return HostForward(proto: transportProtocol == .tcp ? .tcp : .udp, hostAddress: hostAddress.wire, hostPort: hostPort,
                       target: target, guestPort: guestPort)
    }

    init(_ m: HostForward, bound: String) {
        var port = m.hostPort
        if let c = bound.lastIndex(of: ":"), let p = UInt16(bound[bound.index(after: c)...]) { port = p }
        let guest: Guest
        switch m.target {
        case .address(let a): guest = .address(IPAddress(wire: a))
        case .hostName(let n): guest = .hostName(n)
        }
        self.init(m.proto == .tcp ? .tcp : .udp, hostAddress: IPAddress(wire: m.hostAddress), hostPort: port,
                  guest: guest, guestPort: m.guestPort)
    }

    func matches(_ other: PortForward) -> Bool {
        transportProtocol == other.transportProtocol && hostAddress == other.hostAddress && hostPort == other.hostPort
    }
}

/// A record the gateway's DNS answers locally.
public struct DNSRecord: Hashable, Sendable {
    /// The record types the gateway answers locally.
    public enum RecordType: String, Sendable, Hashable {
        /// An IPv4 address.
        case a = "A"
        /// An IPv6 address.
        case aaaa = "AAAA"
        /// Text.
        case txt = "TXT"
        /// A service: the value is `PRIORITY WEIGHT PORT TARGET`.
        case srv = "SRV"

        var local: LocalDNSType {
            switch self {
            case .a: .a
            case .aaaa: .aaaa
            case .txt: .txt
            case .srv: .srv
            }
        }

        init?(_ t: LocalDNSType) {
            switch t {
            case .a: self = .a
            case .aaaa: self = .aaaa
            case .txt: self = .txt
            case .srv: self = .srv
            }
        }
    }

    /// The name, without a trailing dot.
    public var name: String
    /// The record type.
    public var type: RecordType
    /// The address, text or SRV fields, as text.
    public var value: String
    /// Seconds resolvers may cache the answer.
    public var ttl: UInt32

    /// A record.
    public init(name: String, type: RecordType, value: String, ttl: UInt32 = 60) {
        self.name = name
        self.type = type
        self.value = value
        self.ttl = ttl
    }
}

/// A fixed DHCP address for a MAC.
public struct StaticLease: Hashable, Sendable {
    /// The guest NIC's address.
    public var mac: EthernetAddress
    /// The address it always gets (inside the DHCP range).
    public var address: IPAddress
    /// A DNS name for it (letters, digits and '-').
    public var hostName: String?

    /// A static lease.
    public init(mac: EthernetAddress, address: IPAddress, hostName: String? = nil) {
        self.mac = mac
        self.address = address
        self.hostName = hostName
    }
}

/// A DHCP lease.
public struct Lease: Hashable, Sendable {
    /// The guest NIC's address.
    public var mac: EthernetAddress
    /// The address it holds.
    public var address: IPAddress
    /// The host name it gave (DHCP option 12) or its static lease's.
    public var hostName: String?
    /// Seconds until it expires (0 for an unbound static lease).
    public var remainingSeconds: UInt64
    /// Whether it comes from a static lease.
    public var isStatic: Bool

    init(_ l: DHCPLease) {
        mac = EthernetAddress(rawValue: l.mac.rawValue)
        address = IPAddress(ipv4Value: l.address.rawValue)
        hostName = l.hostName
        remainingSeconds = l.remainingSeconds
        isStatic = l.isStatic
    }
}

/// A change of the DHCP leases, from ``VirtualNetwork/leaseEvents()``.
public enum LeaseEvent: Hashable, Sendable {
    /// A guest got a lease, or renewed one (a DHCP ACK).
    case granted(Lease)
    /// A lease is gone: the guest released or declined it, or it expired.
    case released(Lease)

    /// The lease concerned.
    public var lease: Lease {
        switch self {
        case .granted(let l), .released(let l): l
        }
    }
}

/// One switch port's counters.
public struct PortStatistics: Hashable, Sendable {
    /// The port.
    public var port: PortID
    /// Its label (the VM's, the listener's, or "gateway").
    public var name: String
    /// Whether this is the gateway's own port.
    public var isGateway: Bool
    /// Whether a peer is connected (stream ports can be waiting for one).
    public var isConnected: Bool
    /// Frames and bytes received from the port's peer, and frames dropped on the way in.
    public var rxPackets: UInt64, rxBytes: UInt64, rxDrops: UInt64
    /// Frames and bytes sent to the port's peer, and frames dropped because it could not keep up.
    public var txPackets: UInt64, txBytes: UInt64, txDrops: UInt64

    init(_ s: SwitchPortSnapshot) {
        port = PortID(rawValue: s.port)
        name = s.name
        isGateway = s.isGateway
        isConnected = s.connected
        rxPackets = s.rxPackets
        rxBytes = s.rxBytes
        rxDrops = s.rxDrops
        txPackets = s.txPackets
        txBytes = s.txBytes
        txDrops = s.txDrops
    }
}

/// A learned MAC address of the switch.
public struct MACTableEntry: Hashable, Sendable {
    /// The VLAN it was learned on.
    public var vlan: UInt16
    /// The address.
    public var mac: EthernetAddress
    /// The port it was last seen on.
    public var port: PortID
    /// Seconds since a frame from it was last seen.
    public var secondsSinceSeen: UInt64
}
