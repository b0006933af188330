// A host forward: one value for every way vnet makes a host address reach a guest port.
//
// Theory of Operation
// -------------------
// `vnet user`'s hostfwd rules, `vnet nat`'s port maps, the library's forwards and kernel NAT's nftables port
// maps are all one `HostForward`: a protocol, a host end (an address and port, or a unix socket path) and a
// target (a guest address, or whichever VM holds a DHCP host name when a connection arrives) with its port.
// The user-mode runtimes serve them with listening sockets (VNetRuntime/ForwardListeners.swift); kernel NAT
// renders them as DNAT rules (VNetKernel/NftRuleset.swift), where only IPv4 addresses apply.

import VNetWire

public enum ForwardProtocol: String, Sendable { case tcp, udp }

/// Where a forward's connections go.
public enum ForwardTarget: Equatable, Sendable, CustomStringConvertible {
    /// A guest address of either family.
    case address(IPAddress)
    /// Whichever VM holds this lease host name (reached at its IPv4 lease address).
    case hostName(String)

    /// IPv6 in brackets (before a `:port`).
    public var description: String {
        switch self {
        case .address(let a): a.bracketed
        case .hostName(let h): h
        }
    }

    /// The address or the name as is (JSON values, tables).
    public var plainDescription: String {
        switch self {
        case .address(let a): a.description
        case .hostName(let h): h
        }
    }
}

/// `hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`, a port map `[tcp|udp]:[HOSTADDR]:HOSTPORT-VM:GUESTPORT`,
/// or their unix-socket form: a host listener whose connections (or datagrams) go to a guest port.
/// Either side may be IPv4 or IPv6 (`hostfwd=tcp:[::1]:2222-:22`, `hostfwd=tcp::8080-[fec0::15]:80`): the listener's
/// family and the guest address's family are independent.
public struct HostForward: Equatable, Sendable, CustomStringConvertible {
    public var proto: ForwardProtocol
    /// 0.0.0.0 (or ::) binds every host address of that family, as in QEMU.
    public var hostAddress: IPAddress
    public var hostPort: UInt16
    public var target: ForwardTarget
    public var guestPort: UInt16
    /// `unix:PATH-[guestaddr]:guestport`: the host end is a unix stream socket at PATH (TCP to the guest;
    /// hostAddress/hostPort unused), created with `unixMode` and removed when the forward goes.
    public var unixPath: String? = nil
    public var unixMode: UInt32 = 0o600

    public init(proto: ForwardProtocol, hostAddress: IPAddress, hostPort: UInt16, target: ForwardTarget, guestPort: UInt16) {
        self.proto = proto
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.target = target
        self.guestPort = guestPort
    }

    public init(proto: ForwardProtocol, hostAddress: IPAddress, hostPort: UInt16, guestAddress: IPAddress, guestPort: UInt16) {
        self.init(proto: proto, hostAddress: hostAddress, hostPort: hostPort, target: .address(guestAddress), guestPort: guestPort)
    }

    public init(proto: ForwardProtocol, hostAddress: IPv4Address, hostPort: UInt16, guestAddress: IPv4Address, guestPort: UInt16) {
        self.init(proto: proto, hostAddress: IPAddress(hostAddress), hostPort: hostPort, guestAddress: IPAddress(guestAddress), guestPort: guestPort)
    }

    public init(proto: ForwardProtocol, hostAddress: IPv4Address, hostPort: UInt16, target: ForwardTarget, guestPort: UInt16) {
        self.init(proto: proto, hostAddress: IPAddress(hostAddress), hostPort: hostPort, target: target, guestPort: guestPort)
    }

    /// The guest address of an address target (nil for a host name, resolved when a connection arrives).
    public var guestAddress: IPAddress? {
        if case .address(let a) = target { return a }
        return nil
    }

    public var targetDescription: String { target.description }

    public var description: String {
        if let p = unixPath { return "unix:\(p) -> tcp \(targetDescription):\(guestPort)" }
        return "\(proto.rawValue) \(hostAddress.bracketed):\(hostPort) -> \(targetDescription):\(guestPort)"
    }
}
