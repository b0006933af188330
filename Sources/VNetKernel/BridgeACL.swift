// qemu-bridge-helper's access list (/etc/qemu/bridge.conf), which `vnet tap-helper` honours when installed setuid.
// Pure: the caller reads the file.

/// qemu-bridge-helper's ACL file: `allow NAME|all` and `deny NAME|all`, one per line, '#' comments; a deny
/// for the bridge (or all) wins over any allow, as in qemu-bridge-helper (deny rules are checked first).
public enum BridgeACL {
    public static func allows(_ bridge: String, config: String) -> Bool {
        var allowed = false
        var denied = false
        for raw in config.split(separator: "\n") {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard words.count == 2 else { continue }
            let matches = words[1] == "all" || words[1] == bridge
            if words[0] == "allow" && matches { allowed = true }
            if words[0] == "deny" && matches { denied = true }
        }
        return allowed && !denied
    }
}
