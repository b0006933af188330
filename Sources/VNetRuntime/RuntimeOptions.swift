// What `vnet user` was asked to do, after argument parsing: which transport connects QEMU, and the
// runtime knobs that are not part of QEMU's option string.

import VNetGateway

public enum GuestTransport: Equatable, Sendable {
    /// Listen on a unix stream socket (mode 0600): `-netdev stream,…,addr.type=unix` and `-netdev socket`.
    case unixListen(path: String)
    /// Listen on TCP: `-netdev stream,…,addr.type=inet` and `-netdev socket,connect=`.
    case tcpListen(host: String, port: UInt16)
    /// Connect to a listening QEMU (`server=on`), reconnecting when it goes away.
    case connectUnix(path: String)
    case connectTCP(host: String, port: UInt16)
    /// One frame per datagram on a unix socket bound at `path`, or a UDP socket bound at host:port; the peer
    /// is fixed, or learned from the first datagram.
    case dgramUnix(path: String, peer: String?)
    case dgramUDP(host: String, port: UInt16, peerHost: String?, peerPort: UInt16?)
    /// A TAP device created inside a network namespace, as slirp4netns does.
    case tap(netns: String, name: String)
    /// A transport with a protocol of its own (vhost-user): see PortTransport.swift.
    case transport(PluggedTransport)
}

public struct RuntimeOptions: Sendable {
    public var gateway: GatewayConfig
    public var transport: GuestTransport
    public var resolvConfPath: String = "/etc/resolv.conf"
    /// Overrides resolv.conf when set.
    public var dnsUpstream: (address: String, port: UInt16)? = nil
    /// True when the socket path was chosen by vnet (printed with QEMU arguments).
    public var transportIsDefault = false
    /// `--vfkit`: the datagram socket speaks vfkit's framing (a 4-byte "VFKT" datagram announces the peer).
    public var vfkitHandshake = false
    /// `vnet run`: the NIC model QEMU got (`-device MODEL`), shown by `info network` with the guest's MAC.
    public var nicModel: String? = nil
    /// `.tap` only: open it with IFF_VNET_HDR and checksum/TSO offload (on unless --no-tap-offload).
    public var tapOffload = true
    /// `--busy-poll USEC`: keep polling that long after a turn with events before sleeping (0: off).
    public var busyPollMicroseconds = 0
    /// `--control PATH`: the control socket (see ControlServer.swift).
    public var controlPath: String? = nil
    /// `--pcap FILE`: capture from the start; `pcapRotateBytes` renames a full file to FILE.1.
    public var pcapPath: String? = nil
    public var pcapRotateBytes: UInt64? = nil
    /// `--metrics ADDR:PORT`: the Prometheus endpoint; `render` produces the text of the backend the executable
    /// bootstrapped (the runtime updates the swift-metrics values just before calling it).
    public var metrics: MetricsOptions? = nil
    /// `--sandbox`: once set-up is done (sockets bound, TAP and files open), drop every capability and install
    /// the seccomp allow-list (VNetHost/Sandbox.swift). Features that would need more later are refused.
    public var sandbox = false
    /// `.tap` only: opens the TAP instead of the runtime (`vnet slirp4netns` joins the caller's user namespace
    /// from a forked child, see NamespaceTap.swift). Returns the fd and whether it was opened with offload.
    public var openTap: (@Sendable () throws -> (fd: Int32, offload: Bool))? = nil

    public init(gateway: GatewayConfig, transport: GuestTransport) {
        self.gateway = gateway
        self.transport = transport
    }
}

public struct MetricsOptions: Sendable {
    public var host: String
    public var port: UInt16
    public var render: @Sendable () -> [UInt8]

    public init(host: String, port: UInt16, render: @escaping @Sendable () -> [UInt8]) {
        self.host = host
        self.port = port
        self.render = render
    }
}
