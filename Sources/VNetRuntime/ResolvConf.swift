// Upstream DNS resolvers from a resolv.conf-style file, re-read when the file changes (VPNs rewrite it).
// IPv4 and IPv6 `nameserver` lines are used, in order; an IPv6 link-local one (fe80::/10, which needs a zone such
// as `%eth0` to mean anything) is skipped, as are unspecified addresses and anything that does not parse.

import VNetGateway
import VNetHost
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public enum ResolvConf {
    /// Parses `nameserver ADDRESS` lines, in order. Comments (# ;) and other keywords are ignored.
    public static func parse(_ text: String) -> [IPAddress] {
        var out: [IPAddress] = []
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, fields[0] == "nameserver" else { continue }
            guard let a = IPAddress(text: fields[1]), !a.isUnspecified else { continue }
            if !a.isIPv4 && a.v6.isLinkLocal { continue }
            out.append(a)
        }
        return out
    }

    /// Reads a small text file without Foundation; nil if it cannot be opened.
    static func readFile(_ path: String, limit: Int = 1 << 20) -> String? {
        Sys.readSmallFile(path, limit: limit).map { String(decoding: $0, as: UTF8.self) }
    }
}

/// Watches one resolv.conf by stat identity (device, inode, size, mtime), checked at most once a second.
final class ResolvConfWatcher {
    let path: String
    var identity: [UInt64]?? = .none
    var lastCheck: UInt64 = 0

    init(path: String) { self.path = path }

    /// Returns the new resolver list when the file changed since the last call (or on the first call).
    func poll(nowNanoseconds: UInt64, force: Bool = false) -> [IPAddress]? {
        guard force || nowNanoseconds &- lastCheck >= 1_000_000_000 || lastCheck == 0 else { return nil }
        lastCheck = nowNanoseconds
        let id = Sys.fileIdentity(path)
        if case .some(let old) = identity, old == id, !force { return nil }
        identity = .some(id)
        guard id != nil, let text = ResolvConf.readFile(path) else { return [] }
        return ResolvConf.parse(text)
    }
}
