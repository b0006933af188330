// Direct assignment of PCI network devices to a guest through vfio-pci, driven through sysfs.
//
// Theory of Operation
// -------------------
// The IOMMU isolates devices in groups (/sys/kernel/iommu_groups/N); vfio hands a guest a whole group, so
// every endpoint in the group must leave its host driver (PCI bridges may stay with pcieport, as vfio allows).
// With no IOMMU groups at all the IOMMU is off, and passthrough cannot work: that is an error that says how
// to turn it on.
//
// Binding one device (the way driverctl does it): write "vfio-pci" to its driver_override, write its address
// to its current driver's `unbind`, then to /sys/bus/pci/drivers_probe, which binds it to the override; if it
// is still not on vfio-pci, write it to vfio-pci's `bind`. The original drivers are recorded in a state file
// (one per bound device: "ADDRESS DRIVER" lines for every device moved with it) before anything changes.
// Unbinding reverses it: vfio-pci's `unbind`, an empty driver_override, then the recorded driver's `bind`
// (or drivers_probe when there was none, or no record). Each step is checked by reading the `driver` link.

#if canImport(Glibc)
import Glibc
#endif

public struct PCIDevice: Equatable, Sendable {
    public var address: String
    /// The class code, e.g. 0x020000 (Ethernet).
    public var classCode: UInt32
    public var vendor: String
    public var device: String
    public var driver: String?
    public var iommuGroup: String?
    public var interfaces: [String]

    public var isNetwork: Bool { classCode >> 16 == 0x02 }
    public var isBridge: Bool { classCode >> 8 == 0x0604 }
}

public enum PassthroughError: Error, Equatable, CustomStringConvertible {
    case iommuOff
    case badAddress(String)
    case noSuchDevice(String)
    case noIOMMUGroup(String)
    case vfioNotLoaded
    case groupNeedsConfirmation(address: String, group: String, others: [String])
    case notBound(String, driver: String?)
    case didNotBind(String, expected: String, actual: String?)

    public var description: String {
        switch self {
        case .iommuOff:
            "the IOMMU is off (no groups in /sys/kernel/iommu_groups), so devices cannot be passed through: enable "
                + "VT-d (Intel) or AMD-Vi in the firmware and boot with intel_iommu=on or amd_iommu=on (iommu=pt keeps host "
                + "devices fast)"
        case .badAddress(let a): "'\(a)' is not a PCI address (DOMAIN:BUS:SLOT.FUNCTION, e.g. 0000:01:00.0)"
        case .noSuchDevice(let a): "no PCI device \(a)"
        case .noIOMMUGroup(let a): "\(a) has no IOMMU group, so the IOMMU does not cover it"
        case .vfioNotLoaded: "the vfio-pci driver is not loaded: run 'modprobe vfio-pci'"
        case .groupNeedsConfirmation(let a, let g, let others):
            "IOMMU group \(g) also holds \(others.joined(separator: ", ")); vfio gives a guest the whole group, so "
                + "they must leave their drivers too: confirm, or rerun with --yes (\(a) was not changed)"
        case .notBound(let a, let d): "\(a) is not bound to vfio-pci (its driver is \(d ?? "none"))"
        case .didNotBind(let a, let e, let d): "\(a) did not bind to \(e) (its driver is \(d ?? "none"))"
        }
    }
}

public struct PCIPassthrough {
    public let sysfs: Sysfs
    /// Where the original drivers are recorded (a directory vnet creates if needed).
    public let stateDirectory: String

    public init(sysfs: Sysfs, stateDirectory: String) {
        self.sysfs = sysfs
        self.stateDirectory = stateDirectory
    }

    static let devicesDir = "bus/pci/devices"
    static let driversDir = "bus/pci/drivers"
    static let groupsDir = "kernel/iommu_groups"
    public static let vfio = "vfio-pci"

    /// "01:00.0" -> "0000:01:00.0"; validates hex fields and lengths.
    public static func normalize(_ text: String) throws(PassthroughError) -> String {
        let full = text.split(separator: ":").count == 2 ? "0000:" + text : text
        let parts = full.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2 else { throw .badAddress(text) }
        let sf = parts[2].split(separator: ".", omittingEmptySubsequences: false)
        guard sf.count == 2, sf[0].count == 2, sf[1].count == 1,
              [parts[0], parts[1], sf[0], sf[1]].allSatisfy({ $0.allSatisfy(\.isHexDigit) }),
              let slot = UInt8(sf[0], radix: 16), slot < 32, let fn = UInt8(sf[1], radix: 16), fn < 8 else {
            throw .badAddress(text)
        }
        return full.lowercased()
    }

    public var iommuEnabled: Bool { !sysfs.list(Self.groupsDir).isEmpty }

    public func device(_ address: String) -> PCIDevice? {
        let base = Self.devicesDir + "/" + address
        guard sysfs.exists(base) else { return nil }
        let cls = sysfs.read(base + "/class").flatMap { UInt32($0.hasPrefix("0x") ? String($0.dropFirst(2)) : $0, radix: 16) } ?? 0
        return PCIDevice(address: address, classCode: cls, vendor: sysfs.read(base + "/vendor") ?? "?",
                         device: sysfs.read(base + "/device") ?? "?", driver: sysfs.linkName(base + "/driver"),
                         iommuGroup: sysfs.linkName(base + "/iommu_group"), interfaces: sysfs.list(base + "/net"))
    }

    public func allDevices() -> [PCIDevice] { sysfs.list(Self.devicesDir).compactMap(device) }

    /// Network devices (class 02), for `list`.
    public func networkDevices() -> [PCIDevice] { allDevices().filter(\.isNetwork) }

    /// Devices in `group` other than `address` that must leave their drivers (PCI bridges excluded).
    public func groupCompanions(of address: String, group: String) -> [PCIDevice] {
        sysfs.list(Self.groupsDir + "/" + group + "/devices").filter { $0 != address }.compactMap(device).filter { !$0.isBridge }
    }

    /// What `bind` would move: the device and its group companions; checks everything first.
    public func plan(_ address: String) throws(PassthroughError) -> (device: PCIDevice, group: String, companions: [PCIDevice]) {
        guard iommuEnabled else { throw .iommuOff }
        guard let d = device(address) else { throw .noSuchDevice(address) }
        guard let g = d.iommuGroup else { throw .noIOMMUGroup(address) }
        guard sysfs.exists(Self.driversDir + "/" + Self.vfio) else { throw .vfioNotLoaded }
        return (d, g, groupCompanions(of: address, group: g))
    }

    func statePath(_ address: String) -> String { stateDirectory + "/passthrough-" + address }

    /// Moves `address` and its group companions to vfio-pci. `confirm` is asked about companions (when there
    /// are any) and must return true for anything to change. Returns the devices moved.
    @discardableResult
    public func bind(_ address: String, confirm: ([PCIDevice]) -> Bool) throws -> [PCIDevice] {
        let (d, g, companions) = try plan(address)
        if !companions.isEmpty && !confirm(companions) {
            throw PassthroughError.groupNeedsConfirmation(address: address, group: g,
                                                          others: companions.map { "\($0.address) (\($0.driver ?? "no driver"))" })
        }
        let moving = [d] + companions
        // Record the original drivers first; a device already on vfio-pci keeps an earlier record's driver.
        let earlier = readState(address) ?? [:]
        var record: [(String, String?)] = []
        for m in moving {
            let original = m.driver == Self.vfio ? (earlier[m.address] ?? nil) : m.driver
            record.append((m.address, original))
        }
        try writeState(address, record)
        for m in moving where m.driver != Self.vfio {
            try bindOne(m)
        }
        return moving
    }

    func bindOne(_ m: PCIDevice) throws {
        let base = Self.devicesDir + "/" + m.address
        try sysfs.write(base + "/driver_override", Self.vfio, what: "set the driver override of \(m.address)")
        if let old = m.driver {
            try sysfs.write(Self.driversDir + "/" + old + "/unbind", m.address, what: "unbind \(m.address) from \(old)")
        }
        try? sysfs.write("bus/pci/drivers_probe", m.address, what: "probe \(m.address)")
        if sysfs.linkName(base + "/driver") != Self.vfio {
            try sysfs.write(Self.driversDir + "/" + Self.vfio + "/bind", m.address, what: "bind \(m.address) to vfio-pci")
        }
        let now = sysfs.linkName(base + "/driver")
        guard now == Self.vfio else { throw PassthroughError.didNotBind(m.address, expected: Self.vfio, actual: now) }
    }

    /// Gives `address` (and everything recorded with it) back to the original drivers. Returns
    /// (device, driver it went back to) pairs.
    @discardableResult
    public func unbind(_ address: String) throws -> [(String, String?)] {
        guard let d = device(address) else { throw PassthroughError.noSuchDevice(address) }
        let record = readStateOrdered(address)
        guard d.driver == Self.vfio || record != nil else { throw PassthroughError.notBound(address, driver: d.driver) }
        let entries = record ?? [(address, nil)]
        var restored: [(String, String?)] = []
        for (a, original) in entries {
            guard let m = device(a) else { continue }
            let base = Self.devicesDir + "/" + a
            if m.driver == Self.vfio {
                try sysfs.write(Self.driversDir + "/" + Self.vfio + "/unbind", a, what: "unbind \(a) from vfio-pci")
            }
            try sysfs.write(base + "/driver_override", "\n", what: "clear the driver override of \(a)")
            if let o = original, sysfs.exists(Self.driversDir + "/" + o + "/bind") {
                if (try? sysfs.write(Self.driversDir + "/" + o + "/bind", a, what: "bind \(a) to \(o)")) == nil {
                    try? sysfs.write("bus/pci/drivers_probe", a, what: "probe \(a)")
                }
            } else {
                try? sysfs.write("bus/pci/drivers_probe", a, what: "probe \(a)")
            }
            let now = sysfs.linkName(base + "/driver")
            if let o = original, now != o { throw PassthroughError.didNotBind(a, expected: o, actual: now) }
            restored.append((a, now))
        }
        removeState(address)
        return restored
    }

    // MARK: state file: "ADDRESS DRIVER" lines, "-" for no driver.

    func writeState(_ address: String, _ record: [(String, String?)]) throws {
        try makeDirectories(stateDirectory)
        let text = record.map { "\($0.0) \($0.1 ?? "-")\n" }.joined()
        try writeWholeFile(statePath(address), text)
    }

    func readStateOrdered(_ address: String) -> [(String, String?)]? {
        guard let text = readWholeFile(statePath(address)) else { return nil }
        var out: [(String, String?)] = []
        for line in text.split(separator: "\n") {
            let w = line.split(separator: " ")
            guard w.count == 2, (try? Self.normalize(String(w[0]))) != nil else { continue }
            out.append((String(w[0]), w[1] == "-" ? nil : String(w[1])))
        }
        return out.isEmpty ? nil : out
    }

    func readState(_ address: String) -> [String: String?]? {
        guard let r = readStateOrdered(address) else { return nil }
        var d: [String: String?] = [:]
        for (a, o) in r { d[a] = o }
        return d
    }

    func removeState(_ address: String) { _ = statePath(address).withCString { unlink($0) } }
}

/// mkdir -p (mode 0755).
public func makeDirectories(_ path: String) throws {
    var current = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        current += "/" + part
        if mkdir(current, 0o755) != 0 && errno != EEXIST { throw KernelError("create \(current)", errno: errno) }
    }
}

/// Replaces a file's contents (write to NAME.tmp, then rename).
public func writeWholeFile(_ path: String, _ text: String) throws {
    let tmp = path + ".tmp"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw KernelError("write \(path)", errno: errno) }
    let bytes = Array(text.utf8)
    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    guard n == bytes.count else { throw KernelError("write \(path)", errno: EIO) }
    guard rename(tmp, path) == 0 else { throw KernelError("write \(path)", errno: errno) }
}

/// A whole small file (up to 1 MiB), or nil when missing.
public func readWholeFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 8192)
    while out.count < (1 << 20) {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0 ..< n]
    }
    return String(decoding: out, as: UTF8.self)
}
