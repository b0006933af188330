// Logs each limit that bit since the last report, with how often: at most once per interval, never per packet.
// Also logs a second gateway on the segment (drop_arp_duplicate_gateway, VNetGateway/GatewayAnnounce.swift).
// Shared by `vnet user` (UserNetRuntime) and `vnet nat` (SwitchRuntime with a gateway).

import Logging
import VNetGateway

struct LimitReporter {
    static let interval: UInt64 = 10_000_000_000
    /// Counts at the last report, per reason.
    private var reported: [DropReason: UInt64] = [:]
    private var nextReport: UInt64 = 0

    /// `controlRejected`: control-socket connections refused so far (`--limit control-clients`).
    mutating func report(now: UInt64, counters: GatewayCounters, controlRejected: UInt64, logger: Logger) {
        guard now >= nextReport else { return }
        nextReport = now + LimitReporter.interval
        let duplicates = counters[.arpDuplicateGateway]
        if duplicates > (reported[.arpDuplicateGateway] ?? 0) {
            logger.error("another gateway claims this network's addresses on the segment (drop_arp_duplicate_gateway x\(duplicates - (reported[.arpDuplicateGateway] ?? 0))): run one vnet nat per segment and vnet switch on the other hosts")
            reported[.arpDuplicateGateway] = duplicates
        }
        var bitten = GatewayConfig.limitDropReasons.map { ($0.0, counters[$0.0], $0.1) }
        bitten.append((.controlClientsFull, controlRejected, "--limit control-clients"))
        for (reason, count, remedy) in bitten {
            let last = reported[reason] ?? 0
            guard count > last else { continue }
            reported[reason] = count
            logger.warning("limit reached: \(reason.name) x\(count - last) since the last report (\(remedy))")
        }
    }
}
