// The `dns-add`, `dns-remove` and `dns-list` control commands, shared by every runtime with a gateway: they edit
// and list the gateway's `LocalDNSRecords` table.

import VNetGateway

enum LocalDNSCommands {
    static func add(_ table: inout LocalDNSRecords, _ a: ControlArguments) throws -> ControlResult {
        let name = try a.string("name"), value = try a.string("value")
        let typeName = try a.optionalString("type") ?? "A"
        guard let type = LocalDNSType(name: typeName) else { throw ControlError("record type must be \(LocalDNSType.names), not '\(typeName)'") }
        let ttl = try a.optionalInt("ttl") ?? 60
        guard (0 ... 604_800).contains(ttl) else { throw ControlError("ttl must be 0-604800 seconds") }
        do { try table.add(name: name, type: type, value: value, ttl: UInt32(ttl)) } catch { throw ControlError(error.description) }
        return ControlResult(value: ["name": LocalDNSRecords.normalise(name), "type": type.name, "value": value, "ttl": ttl],
                             text: "\(LocalDNSRecords.normalise(name)) \(ttl) IN \(type.name) \(value)")
    }

    static func remove(_ table: inout LocalDNSRecords, _ a: ControlArguments) throws -> ControlResult {
        let name = try a.string("name")
        var type: LocalDNSType? = nil
        if let t = try a.optionalString("type") {
            guard let parsed = LocalDNSType(name: t) else { throw ControlError("record type must be \(LocalDNSType.names), not '\(t)'") }
            type = parsed
        }
        let n = table.remove(name: name, type: type, value: try a.optionalString("value"))
        guard n > 0 else { throw ControlError("no local DNS record for \(name)") }
        return ControlResult(value: ["removed": n], text: "removed \(n) record\(n == 1 ? "" : "s")")
    }

    /// The table's records as values and text lines (the caller may append more before rendering).
    static func list(_ table: LocalDNSRecords) -> (value: [[String: Any]], lines: [String]) {
        (table.records.map { ["name": $0.name, "type": $0.type.name, "value": $0.value, "ttl": Int($0.ttl)] as [String: Any] },
         table.records.map { "\($0.name) \($0.ttl) IN \($0.type.name) \($0.value)" })
    }
}
