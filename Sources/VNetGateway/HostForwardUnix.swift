// hostfwd with a unix-socket host end: `hostfwd=unix:PATH-[guestaddr]:guestport` (the same in `vnet ctl
// hostfwd_add rule=…` and `vnet nat --port-map`). A host client that connects to PATH reaches the guest's TCP
// port, as gvproxy's `expose` with protocol unix does for podman machine. The path runs up to the last '-' (the
// guest side never holds one), must be absolute and fit a sockaddr_un (107 bytes), and holds no NUL or comma
// (a comma would end QEMU's option). Opening the socket is the runtime's (UserNetUnixForwards.swift).

import VNetServices
import VNetWire

extension UserNetOptions {
    static func parseUnixHostForward(_ v: String) throws(UserNetOptionError) -> (ForwardProtocol, IPAddress, UInt16, IPAddress?, UInt16, String?) {
        let body = v.dropFirst(5)
        guard let dash = body.lastIndex(of: "-") else {
            throw UserNetOptionError("option 'hostfwd': expected unix:PATH-[guestaddr]:guestport, got '\(v)'")
        }
        let path = String(body[..<dash])
        try checkUnixForwardPath(path)
        let (guestAddress, guestPortText) = try splitAddressPort("hostfwd", body[body.index(after: dash)...])
        let guestPort = try parsePort("hostfwd", guestPortText, allowZero: false)
        return (.tcp, IPAddress(IPv4Address.any), 0, guestAddress, guestPort, path)
    }

    /// A unix forward's path: absolute, at most 107 bytes, no NUL, no comma.
    public static func checkUnixForwardPath(_ path: String) throws(UserNetOptionError) {
        guard path.hasPrefix("/") else { throw UserNetOptionError("option 'hostfwd': unix socket path must be absolute, got '\(path)'") }
        guard path.utf8.count <= 107 else { throw UserNetOptionError("option 'hostfwd': unix socket path longer than 107 bytes") }
        guard !path.utf8.contains(0), !path.contains(",") else { throw UserNetOptionError("option 'hostfwd': unix socket path holds a NUL or a comma") }
    }
}
