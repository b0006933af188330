// `vnet passthrough` against a fake sysfs tree shaped like the real one (devices under devices/pci0000:00,
// bus/pci/devices/ADDR symlinks to them, driver and iommu_group symlinks, bus/pci/drivers/NAME/{bind,unbind,
// new_id}, drivers_probe, kernel/iommu_groups/N/devices), with the kernel's part played by a write hook.

import Testing
import VNetKernel
#if canImport(Glibc)
import Glibc
#endif

/// A sysfs tree in a temporary directory plus a tiny "kernel" that reacts to writes as Linux does.
final class FakeSysfs {
    let root: String
    let sysfs: Sysfs
    /// Every write, in order: "relative/path <- text".
    var writes: [String] = []
    /// The driver drivers_probe picks for a device with no driver_override.
    var nativeDriver: [String: String] = [:]
    /// Drivers that refuse to bind (as a driver whose probe fails).
    var refusing: Set<String> = []

    init(iommu: Bool = true, vfioLoaded: Bool = true) {
        var template = Array("/tmp/vnet-fake-sysfs-XXXXXX".utf8CString)
        root = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        sysfs = Sysfs(root: root)
        for d in ["bus/pci/devices", "devices/pci0000:00", "kernel/iommu_groups"] { mkdirs(d) }
        touch("bus/pci/drivers_probe")
        for drv in ["e1000e", "igb", "pcieport"] + (vfioLoaded ? ["vfio-pci"] : []) {
            mkdirs("bus/pci/drivers/\(drv)")
            for f in ["bind", "unbind", "new_id"] { touch("bus/pci/drivers/\(drv)/\(f)") }
        }
        if !iommu { return }
        sysfs.onWrite = { [unowned self] path, text in self.kernel(path, text) }
    }

    deinit { removeTree(root) }

    func mkdirs(_ rel: String) { _ = try? makeDirectories(root + "/" + rel) }
    func touch(_ rel: String, _ text: String = "") { try? writeWholeFile(root + "/" + rel, text) }
    func link(_ target: String, _ rel: String) {
        _ = unlink(root + "/" + rel)
        _ = symlink(target, root + "/" + rel)
    }
    func read(_ rel: String) -> String? { readWholeFile(root + "/" + rel) }

    func addDevice(_ addr: String, classCode: String, driver: String?, group: String?, net: [String] = []) {
        let dev = "devices/pci0000:00/\(addr)"
        mkdirs(dev)
        link("../../../devices/pci0000:00/\(addr)", "bus/pci/devices/\(addr)")
        touch("\(dev)/class", classCode + "\n")
        touch("\(dev)/vendor", "0x8086\n")
        touch("\(dev)/device", "0x10d3\n")
        touch("\(dev)/driver_override", "(null)\n")
        if let d = driver {
            link("../../../bus/pci/drivers/\(d)", "\(dev)/driver")
            nativeDriver[addr] = d
        }
        if let g = group {
            mkdirs("kernel/iommu_groups/\(g)/devices")
            link("../../../../devices/pci0000:00/\(addr)", "kernel/iommu_groups/\(g)/devices/\(addr)")
            link("../../../kernel/iommu_groups/\(g)", "\(dev)/iommu_group")
        }
        for n in net { mkdirs("\(dev)/net/\(n)") }
    }

    func driver(_ addr: String) -> String? { sysfs.linkName("bus/pci/devices/\(addr)/driver") }

    /// The kernel's side of driver binding.
    func kernel(_ path: String, _ text: String) {
        writes.append("\(path) <- \(text)")
        let addr = text.trimmingCharacters()
        let parts = path.split(separator: "/").map(String.init)
        if parts.count == 5, parts[0] == "bus", parts[2] == "drivers" {
            let drv = parts[3]
            if parts[4] == "unbind", driver(addr) == drv { _ = unlink(root + "/bus/pci/devices/\(addr)/driver") }
            if parts[4] == "bind", driver(addr) == nil, !refusing.contains(drv) { link("../../../bus/pci/drivers/\(drv)", "bus/pci/devices/\(addr)/driver") }
        }
        if path == "bus/pci/drivers_probe", driver(addr) == nil {
            let override = read("bus/pci/devices/\(addr)/driver_override")?.trimmingCharacters() ?? ""
            let pick = override.isEmpty || override == "(null)" ? nativeDriver[addr] : override
            if let p = pick, !refusing.contains(p) { link("../../../bus/pci/drivers/\(p)", "bus/pci/devices/\(addr)/driver") }
        }
    }
}

/// rm -r without following symlinks.
func removeTree(_ path: String) {
    var st = stat()
    guard lstat(path, &st) == 0 else { return }
    if (st.st_mode & S_IFMT) == S_IFDIR, let d = opendir(path) {
        var names: [String] = []
        while let e = readdir(d) {
            let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if n != "." && n != ".." { names.append(n) }
        }
        closedir(d)
        for n in names { removeTree(path + "/" + n) }
        _ = rmdir(path)
    } else {
        _ = unlink(path)
    }
}

extension String {
    func trimmingCharacters() -> String { String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed()) }
}

@Suite("passthrough")
struct PassthroughTests {
    @Test("PCI addresses are normalized and checked")
    func addresses() throws {
        #expect(try PCIPassthrough.normalize("01:00.0") == "0000:01:00.0")
        #expect(try PCIPassthrough.normalize("0000:3B:00.1") == "0000:3b:00.1")
        for bad in ["", "1:00.0", "0000:01:00", "0000:01:20.0", "0000:01:00.8", "zz:00.0", "0000:01:00.0/../x", "../../etc"] {
            #expect(throws: PassthroughError.self) { _ = try PCIPassthrough.normalize(bad) }
        }
    }

    @Test("list: network devices only, with driver, IOMMU group and interfaces")
    func list() {
        let f = FakeSysfs()
        f.addDevice("0000:01:00.0", classCode: "0x020000", driver: "e1000e", group: "7", net: ["enp1s0"])
        f.addDevice("0000:02:00.0", classCode: "0x020000", driver: nil, group: "8")
        f.addDevice("0000:00:02.0", classCode: "0x030000", driver: nil, group: "1")
        let p = PCIPassthrough(sysfs: f.sysfs, stateDirectory: f.root + "/vnet-state")
        let nics = p.networkDevices()
        #expect(nics.map(\.address) == ["0000:01:00.0", "0000:02:00.0"])
        #expect(nics[0].driver == "e1000e" && nics[0].iommuGroup == "7" && nics[0].interfaces == ["enp1s0"] && nics[0].vendor == "0x8086")
        #expect(nics[1].driver == nil && nics[1].iommuGroup == "8")
        #expect(p.iommuEnabled)
    }

    @Test("an IOMMU that is off is an explained error, and nothing is written")
    func iommuOff() {
        let f = FakeSysfs(iommu: false)
        f.addDevice("0000:01:00.0", classCode: "0x020000", driver: "e1000e", group: nil)
        let p = PCIPassthrough(sysfs: f.sysfs, stateDirectory: f.root + "/vnet-state")
        #expect(!p.iommuEnabled)
        #expect(throws: PassthroughError.iommuOff) { try p.bind("0000:01:00.0") { _ in true } }
        #expect(PassthroughError.iommuOff.description.contains("intel_iommu=on"))
        #expect(f.driver("0000:01:00.0") == "e1000e")
        #expect(f.read("devices/pci0000:00/0000:01:00.0/driver_override") == "(null)\n")
    }

    @Test("vfio-pci not loaded, unknown device: explained errors")
    func missingPieces() {
        let f = FakeSysfs(vfioLoaded: false)
        f.addDevice("0000:01:00.0", classCode: "0x020000", driver: "e1000e", group: "7")
        let p = PCIPassthrough(sysfs: f.sysfs, stateDirectory: f.root + "/vnet-state")
        #expect(throws: PassthroughError.vfioNotLoaded) { try p.bind("0000:01:00.0") { _ in true } }
        #expect(throws: PassthroughError.noSuchDevice("0000:09:00.0")) { try p.bind("0000:09:00.0") { _ in true } }
        #expect(f.writes.isEmpty)
    }

    @Test("bind moves a lone device to vfio-pci through driver_override; unbind gives it back to e1000e")
    func bindAndUnbind() throws {
        let f = FakeSysfs()
        f.addDevice("0000:01:00.0", classCode: "0x020000", driver: "e1000e", group: "7")
        let state = f.root + "/vnet-state"
        let p = PCIPassthrough(sysfs: f.sysfs, stateDirectory: state)
        var asked = false
        let moved = try p.bind("0000:01:00.0") { _ in asked = true; return false }
        #expect(!asked)
        #expect(moved.map(\.address) == ["0000:01:00.0"])
        #expect(f.driver("0000:01:00.0") == "vfio-pci")
        #expect(f.writes == ["bus/pci/devices/0000:01:00.0/driver_override <- vfio-pci",
                             "bus/pci/drivers/e1000e/unbind <- 0000:01:00.0",
                             "bus/pci/drivers_probe <- 0000:01:00.0"])
        #expect(readWholeFile(state + "/passthrough-0000:01:00.0") == "0000:01:00.0 e1000e\n")

        f.writes = []
        let restored = try p.unbind("0000:01:00.0")
        #expect(restored.map { $0.0 } == ["0000:01:00.0"] && restored.map { $0.1 } == ["e1000e"])
        #expect(f.driver("0000:01:00.0") == "e1000e")
        #expect(f.writes == ["bus/pci/drivers/vfio-pci/unbind <- 0000:01:00.0",
                             "bus/pci/devices/0000:01:00.0/driver_override <- \n",
                             "bus/pci/drivers/e1000e/bind <- 0000:01:00.0"])
        #expect(readWholeFile(state + "/passthrough-0000:01:00.0") == nil)
        #expect(throws: PassthroughError.notBound("0000:01:00.0", driver: "e1000e")) { try p.unbind("0000:01:00.0") }
    }

    @Test("the rest of the IOMMU group moves only after confirmation; PCI bridges stay; unbind restores all")
    func groupConfirmation() throws {
        let f = FakeSysfs()
        f.addDevice("0000:01:00.0", classCode: "0x020000", driver: "igb", group: "9")
        f.addDevice("0000:01:00.1", classCode: "0x020000", driver: "igb", group: "9")
        f.addDevice("0000:00:1c.0", classCode: "0x060400", driver: "pcieport", group: "9")
        let state = f.root + "/vnet-state"
        let p = PCIPassthrough(sysfs: f.sysfs, stateDirectory: state)
        var offered: [String] = []
        #expect(throws: PassthroughError.self) { try p.bind("0000:01:00.0") { others in offered = others.map(\.address); return false } }
        #expect(offered == ["0000:01:00.1"])
        #expect(f.writes.isEmpty && f.driver("0000:01:00.0") == "igb" && readWholeFile(state + "/passthrough-0000:01:00.0") == nil)

        let moved = try p.bind("0000:01:00.0") { _ in true }
        #expect(moved.map(\.address) == ["0000:01:00.0", "0000:01:00.1"])
        #expect(f.driver("0000:01:00.0") == "vfio-pci" && f.driver("0000:01:00.1") == "vfio-pci" && f.driver("0000:00:1c.0") == "pcieport")
        #expect(readWholeFile(state + "/passthrough-0000:01:00.0") == "0000:01:00.0 igb\n0000:01:00.1 igb\n")

        _ = try p.unbind("0000:01:00.0")
        #expect(f.driver("0000:01:00.0") == "igb" && f.driver("0000:01:00.1") == "igb")
        #expect(f.read("devices/pci0000:00/0000:01:00.1/driver_override") == "\n")
    }

    @Test("a device with no driver binds via vfio-pci and unbinds to no driver (probe picks none)")
    func noDriver() throws {
        let f = FakeSysfs()
        f.addDevice("0000:02:00.0", classCode: "0x020000", driver: nil, group: "4")
        let state = f.root + "/vnet-state"
        let p = PCIPassthrough(sysfs: f.sysfs, stateDirectory: state)
        try p.bind("0000:02:00.0") { _ in true }
        #expect(f.driver("0000:02:00.0") == "vfio-pci")
        #expect(readWholeFile(state + "/passthrough-0000:02:00.0") == "0000:02:00.0 -\n")
        _ = try p.unbind("0000:02:00.0")
        #expect(f.driver("0000:02:00.0") == nil)
    }

    @Test("when vfio-pci refuses the device, bind says so instead of claiming success")
    func refusal() {
        let f = FakeSysfs()
        f.addDevice("0000:01:00.0", classCode: "0x020000", driver: "e1000e", group: "7")
        f.refusing = ["vfio-pci"]
        let p = PCIPassthrough(sysfs: f.sysfs, stateDirectory: f.root + "/vnet-state")
        #expect(throws: PassthroughError.didNotBind("0000:01:00.0", expected: "vfio-pci", actual: nil)) { try p.bind("0000:01:00.0") { _ in true } }
        #expect(f.writes.last == "bus/pci/drivers/vfio-pci/bind <- 0000:01:00.0")
    }
}
