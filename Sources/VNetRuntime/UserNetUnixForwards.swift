// hostfwd with a unix-socket host end (`hostfwd=unix:PATH-:PORT`, HostForwardUnix.swift) on `vnet user`'s loop.
//
// The listener is a unix stream socket at PATH, mode 0600 unless the rule says otherwise (`mode=` of
// `vnet ctl hostfwd_add`); a leftover socket nobody listens on is replaced, anything else at PATH is refused.
// It sits in the same slot table as the TCP listeners (its epoll tag is forwardTCP's), so accepting is shared:
// a unix client has no address, so the guest sees it come from the gateway (127.0.0.1 mapped, like a loopback
// client), from a port taken in turn from 49152-65535. The file is removed when the forward is removed and when
// vnet stops (not in the sandbox, which forbids unlink).

import VNetGateway
import VNetHost
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

extension UserNetRuntime {
    nonisolated(unsafe) static var nextUnixClientPort: UInt16 = 49152

    /// Binds a unix forward's listener in a free slot; returns the slot.
    func openUnixForward(_ rule: HostForward, path: String) throws -> Int {
        let slot = forwards.firstIndex(where: { $0 == nil }) ?? forwards.count
        let fd: Int32
        do { fd = try UserNetRuntime.listenUnix(path: path) } catch { throw RuntimeError("hostfwd unix:\(path): \(error)") }
        do {
            if rule.unixMode != 0o600, chmod(path, mode_t(rule.unixMode)) != 0 {
                throw RuntimeError("hostfwd unix:\(path): chmod: \(Sys.errnoString(errno))")
            }
            try epoll.add(fd, events: Epoll.readable, tag: LoopTag.forwardTCP.tag | UInt64(slot))
        } catch {
            Sys.close(fd)
            unlink(path)
            throw error
        }
        let active = ActiveForward(rule: rule, fd: fd, bound: "unix:\(path)")
        if slot == forwards.count { forwards.append(active) } else { forwards[slot] = active }
        return slot
    }

    /// The address and port a unix client appears from (to the gateway: loopback, so the guest sees 10.0.2.2).
    static func unixClientEndpoint() -> (IPAddress, UInt16) {
        let p = UserNetRuntime.nextUnixClientPort
        UserNetRuntime.nextUnixClientPort = p == 65535 ? 49152 : p + 1
        return (IPAddress(IPv4Address(127, 0, 0, 1)), p)
    }

    /// Removes a unix forward's socket file (closeForward, and on exit).
    func removeUnixForwardFile(_ rule: HostForward) {
        if let p = rule.unixPath, !sandboxed { unlink(p) }
    }

    func removeUnixForwardFiles() {
        for case let f? in forwards { removeUnixForwardFile(f.rule) }
    }
}

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
        if forwards.contains(where: { $0?.rule.unixPath == rule.unixPath }) {
            throw ControlError("unix:\(rule.unixPath ?? "") is already forwarded")
        }
        return rule
    }

    func unixForwardRemove(_ path: String) throws -> ControlResult {
        guard let slot = forwards.firstIndex(where: { $0?.rule.unixPath == path }) else {
            throw ControlError("host forwarding rule for unix:\(path) not found")
        }
        let f = forwards[slot]!
        closeForward(slot)
        logger.info("hostfwd removed: \(forwardDescription(f))")
        return ControlResult(value: forwardValue(f), text: "removed hostfwd \(forwardDescription(f))")
    }
}
