// hostfwd with a unix-socket host end (`hostfwd=unix:PATH-:PORT`, HostForwardUnix.swift) at run time: what
// `vnet ctl hostfwd_add` and `hostfwd_remove` check for such a rule. The listener itself is one more entry of
// `ForwardListeners` (ForwardListeners.swift), like every forward.

import VNetGateway
import VNetHost
import VNetServices
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

extension UserNetRuntime {
    /// hostfwd_add of a unix rule: the path must be free in the table, `mode=` (octal) sets the socket's mode,
    /// and the sandbox refuses it (chmod and unlink are not allowed there).
    func unixForwardRule(_ rule: HostForward, _ a: ControlArguments) throws -> HostForward {
        var rule = rule
        if let m = try a.optionalString("mode") {
            guard let v = UInt32(m, radix: 8), v <= 0o777 else { throw ControlError("mode must be octal permission bits such as 0660, got '\(m)'") }
            rule.unixMode = v
        }
        if sandboxed { throw ControlError("--sandbox: unix forwards are given at start (hostfwd=unix:…), not at run time") }
        if forwards.entries.contains(where: { $0?.rule.unixPath == rule.unixPath }) {
            throw ControlError("unix:\(rule.unixPath ?? "") is already forwarded")
        }
        return rule
    }

    func unixForwardRemove(_ path: String) throws -> ControlResult {
        guard let slot = forwards.entries.firstIndex(where: { $0?.rule.unixPath == path }) else {
            throw ControlError("host forwarding rule for unix:\(path) not found")
        }
        let f = forwards[slot]!
        forwards.close(slot, gateway: gateway)
        logger.info("hostfwd removed: \(forwardDescription(f))")
        return ControlResult(value: forwardValue(f), text: "removed hostfwd \(forwardDescription(f))")
    }
}
