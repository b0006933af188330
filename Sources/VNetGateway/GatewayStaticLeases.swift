// Static DHCP leases changed at run time (the library API's `addStaticLease`/`removeStaticLease`).

import VNetServices

extension Gateway {
    /// Replaces the DHCP server's static leases (addresses inside the pool; others are ignored).
    public func setStaticLeases(_ leases: [DHCPStaticLease]) {
        dhcp.setStaticLeases(leases)
    }
}
