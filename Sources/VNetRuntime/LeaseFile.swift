// The DHCP lease state file of `vnet nat`: leases survive a restart, so every VM keeps its address.
//
// Format: JSON, `{"version": 1, "leases": [{"mac": "52:54:00:..", "ip": "192.168.122.10", "hostname": "web",
// "expires": 1764000000}]}`, `expires` in Unix seconds (wall clock, so the file means the same after a
// reboot). Writes are atomic: a temporary file in the same directory, fsync, rename over the old one, fsync the
// directory; a crash leaves the old file or the new one, never half of either. A file that exists but does not
// parse is an error the caller reports: it is never silently reset, since that would hand out addresses that
// VMs still hold.

import Foundation
import VNetHost
import VNetServices
import VNetWire

enum LeaseFile {
    struct FileError: Error, CustomStringConvertible {
        var description: String
    }

    /// The saved leases, or nil when there is no file yet.
    static func read(path: String) throws -> [DHCPLease]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FileError(description: "lease file \(path): cannot read it")
        }
        let corrupt = { (why: String) in FileError(description: "lease file \(path) is corrupt (\(why)); fix or remove it (vnet never resets it by itself)") }
        guard let top = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw corrupt("not a JSON object") }
        guard top["version"] as? Int == 1 else { throw corrupt("unknown version") }
        guard let list = top["leases"] as? [[String: Any]] else { throw corrupt("no lease list") }
        let nowUnix = Date().timeIntervalSince1970
        var out: [DHCPLease] = []
        for (i, l) in list.enumerated() {
            guard let m = l["mac"] as? String, let mac = MACAddress(m), let ip = l["ip"] as? String, let a = IPv4Address(ip),
                  let expires = l["expires"] as? Double else { throw corrupt("entry \(i + 1) lacks mac, ip or expires") }
            let left = expires > nowUnix ? UInt64(expires - nowUnix) : 0
            out.append(DHCPLease(mac: mac, address: a, hostName: l["hostname"] as? String, remainingSeconds: left, isStatic: false))
        }
        return out
    }

    static func write(_ leases: [DHCPLease], path: String) throws {
        let nowUnix = Date().timeIntervalSince1970
        let list: [[String: Any]] = leases.filter { !$0.isStatic || $0.remainingSeconds > 0 }.map { l in
            var e: [String: Any] = ["mac": l.mac.description, "ip": l.address.description, "expires": Int(nowUnix) + Int(l.remainingSeconds)]
            if let h = l.hostName { e["hostname"] = h }
            return e
        }
        let data = try JSONSerialization.data(withJSONObject: ["version": 1, "leases": list], options: [.prettyPrinted, .sortedKeys])
        do throws(SyscallError) { try Sys.writeFileAtomically(path, [UInt8](data)) } catch {
            throw FileError(description: "lease file \(path): \(Sys.errnoString(error.errno))")
        }
    }
}
