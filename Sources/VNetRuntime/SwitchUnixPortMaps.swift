// `vnet nat --port-map unix:PATH-VM:GUESTPORT`: a port map whose host end is a unix stream socket, as
// `hostfwd=unix:` is for `vnet user` (UserNetUnixForwards.swift). PATH is created with mode 0600 (a leftover
// socket nobody listens on is replaced; anything else there is refused) and removed with the map and when vnet
// stops (ForwardListeners.swift). A client has no address: the VM sees it come from the gateway, like a loopback
// client.

import VNetGateway
import VNetHost
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

extension HostForward {
    static func parseUnix(_ text: String) -> Result<HostForward, SwitchOptionError> {
        let bad = SwitchOptionError("port map '\(text)': expected unix:PATH-VM:GUESTPORT (PATH absolute; VM: an address or a host name)")
        let body = text.dropFirst(5)
        guard let dash = body.lastIndex(of: "-") else { return .failure(bad) }
        let path = String(body[..<dash])
        do { try UserNetOptions.checkUnixForwardPath(path) } catch { return .failure(SwitchOptionError("port map '\(text)': \(error.message)")) }
        guard case .success(var m) = parsePortMap("tcp::1-" + body[body.index(after: dash)...]) else { return .failure(bad) }
        m.hostPort = 0
        m.unixPath = path
        return .success(m)
    }
}
