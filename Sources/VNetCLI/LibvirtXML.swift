// `--libvirt` (vnet user, vnet nat): the libvirt <interface> element for each port vnet listens on, printed at
// start-up so a domain can be pointed at vnet with what libvirt 9.0 already has.
//
// libvirt's `type='client'` becomes QEMU's `-netdev socket,connect=HOST:PORT`, a length-prefixed stream that
// vnet's `--listen HOST:PORT` serves; `type='udp'` becomes `-netdev socket,udp=HOST:PORT,localaddr=LOCAL:LPORT`,
// one frame per datagram, which vnet's `--dgram HOST:PORT` serves (the peer is learned from its first datagram,
// so any free local port works; one is picked here). Unix sockets have no libvirt interface type before
// vhost-user, so other transports are refused with the reason.

import ArgumentParser
import VNetHost
import VNetRuntime
#if canImport(Glibc)
import Glibc
#endif

enum LibvirtXML {
    static let header = "vnet: libvirt: put this in the domain's <devices> (virsh edit DOMAIN):"

    static func client(host: String, port: UInt16) -> [String] {
        ["<interface type='client'>", "  <source address='\(host)' port='\(port)'/>", "  <model type='virtio'/>", "</interface>"]
    }

    static func udp(host: String, port: UInt16, localPort: UInt16) -> [String] {
        ["<interface type='udp'>", "  <source address='\(host)' port='\(port)'>", "    <local address='\(host)' port='\(localPort)'/>",
         "  </source>", "  <model type='virtio'/>", "</interface>"]
    }

    /// A UDP port free right now on `host` (the domain's local end; vnet learns it from the first datagram).
    static func freeUDPPort(host: String) -> UInt16 {
        guard let a = IPv4Address(host), let fd = try? Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0) else { return 0 }
        defer { Sys.close(fd) }
        guard (try? Sys.bind(fd, SocketAddress(ipv4: a.rawValue, port: 0))) != nil, let bound = Sys.localAddress(fd)?.ipv4 else { return 0 }
        return bound.1
    }

    static func refuse(_ what: String) -> ValidationError {
        ValidationError("--libvirt: libvirt reaches vnet over --listen HOST:PORT (<interface type='client'>) or --dgram HOST:PORT (<interface type='udp'>), not \(what)")
    }

    /// `vnet user`: the lines for its transport.
    static func lines(for transport: GuestTransport) throws -> [String] {
        switch transport {
        case .tcpListen(let h, let p) where p != 0:
            return [header] + client(host: h, port: p)
        case .dgramUDP(let h, let p, _, let peerPort) where p != 0:
            return [header] + udp(host: h, port: p, localPort: peerPort ?? freeUDPPort(host: h))
        default:
            throw refuse("this transport (a port of 0 cannot be given to libvirt either)")
        }
    }

    /// `vnet nat`: the lines for every port it listens on that libvirt can reach.
    static func lines(for ports: [SwitchPortSpec]) throws -> [String] {
        var out: [String] = []
        for spec in ports {
            switch spec.endpoint {
            case .tcpListen(let h, let p) where p != 0: out += client(host: h, port: p)
            case .dgramUDP(let h, let p) where p != 0: out += udp(host: h, port: p, localPort: freeUDPPort(host: h))
            default: continue
            }
        }
        guard !out.isEmpty else { throw refuse("any of the ports given") }
        return [header] + out
    }
}

import VNetWire
