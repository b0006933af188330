// Names the gateway answers itself for a NAT network (`vnet nat`): the host names of DHCP leases and
// `--host` names, so one VM reaches another by name, as with libvirt's dnsmasq.
//
// They live in a second `LocalDNSRecords` table (the first holds records added by flags or the control
// socket, and is asked first), replaced whole by the runtime when leases change. Each name answers bare and
// under the network's domain, type A with a 10 s TTL (leases change); other types get NODATA. The table's cap
// (`LocalDNSRecords.capacity`) bounds it: names beyond it are not answered and go upstream.

import VNetBuffers
import VNetServices
import VNetWire

extension Gateway {
    /// Replaces the lease names (lowercase DNS labels or dotted names) and their addresses.
    public func setLeaseNames(_ names: [String: IPv4Address]) {
        var table = LocalDNSRecords()
        let domain = config.domainName.map(LocalDNSRecords.normalise).flatMap { $0.isEmpty ? nil : $0 }
        for (name, address) in names.sorted(by: { $0.key < $1.key }) {
            try? table.add(name: name, type: .a, value: address.description, ttl: 10)
            if let d = domain { try? table.add(name: name + "." + d, type: .a, value: address.description, ttl: 10) }
        }
        leaseNames = table
    }

    /// Puts back leases saved by an earlier run.
    @discardableResult
    public func restoreLeases(_ saved: [DHCPLease], now: Instant) -> Int { dhcp.restore(saved, now: now) }
}
