// `vnet passthrough`: list network PCI devices and move them to vfio-pci (and back) for QEMU's
// `-device vfio-pci,host=ADDR`.

import ArgumentParser
import VNetKernel
#if canImport(Glibc)
import Glibc
#endif

struct PassthroughLocation: ParsableArguments {
    @Option(name: .customLong("sysfs-root"), help: "The sysfs tree to use (tests point this at a fake tree).") var sysfsRoot: String = "/sys"
    @Option(name: .customLong("state-dir"), help: "Where the original drivers are recorded.") var stateDir: String = "/run/vnet"

    func passthrough() -> PCIPassthrough { PCIPassthrough(sysfs: Sysfs(root: sysfsRoot), stateDirectory: stateDir) }
}

struct PassthroughCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "passthrough",
        abstract: "Give a guest a host network card through vfio-pci (list, bind, unbind).",
        subcommands: [List.self, Bind.self, Unbind.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Network PCI devices with driver and IOMMU group.")
        @OptionGroup var location: PassthroughLocation

        func run() throws {
            let p = location.passthrough()
            let devices = p.networkDevices()
            print(pad("ADDRESS", 14) + pad("ID", 11) + pad("DRIVER", 12) + pad("IOMMU-GROUP", 13) + "INTERFACES")
            for d in devices {
                let id = "\(d.vendor.replacingPrefix("0x")):\(d.device.replacingPrefix("0x"))"
                print(pad(d.address, 14) + pad(id, 11) + pad(d.driver ?? "-", 12) + pad(d.iommuGroup ?? "-", 13)
                      + (d.interfaces.isEmpty ? "-" : d.interfaces.joined(separator: ",")))
            }
            fflush(nil)
            if !p.iommuEnabled { fail(PassthroughError.iommuOff.description, code: 1) }
        }
    }

    struct Bind: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bind", abstract: "Move a device (and, after confirmation, the rest of its IOMMU group) to vfio-pci.")
        @Argument(help: "PCI address, e.g. 0000:01:00.0 or 01:00.0.") var address: String
        @Flag(name: .customLong("yes"), help: "Move the rest of the IOMMU group without asking.") var yes = false
        @OptionGroup var location: PassthroughLocation

        func run() throws {
            let addr: String
            do { addr = try PCIPassthrough.normalize(address) } catch { throw ValidationError("\(error)") }
            let p = location.passthrough()
            try passthroughCall {
                let moved = try p.bind(addr) { others in
                    if yes { return true }
                    guard isatty(0) != 0 else { return false }
                    print("IOMMU group of \(addr) also holds:")
                    for o in others { print("  \(o.address) class 0x\(String(o.classCode, radix: 16)) driver \(o.driver ?? "none")") }
                    print("Move them to vfio-pci too? [y/N] ", terminator: "")
                    fflush(nil)
                    let answer = readLine()?.lowercased() ?? ""
                    return answer == "y" || answer == "yes"
                }
                for m in moved { print("vnet: \(m.address): \(m.driver ?? "no driver") -> vfio-pci") }
                print("vnet: start QEMU with: -device vfio-pci,host=\(addr)")
            }
        }
    }

    struct Unbind: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "unbind", abstract: "Give a device (and its group) back to the original drivers.")
        @Argument(help: "PCI address.") var address: String
        @OptionGroup var location: PassthroughLocation

        func run() throws {
            let addr: String
            do { addr = try PCIPassthrough.normalize(address) } catch { throw ValidationError("\(error)") }
            let p = location.passthrough()
            try passthroughCall {
                for (a, d) in try p.unbind(addr) { print("vnet: \(a): vfio-pci -> \(d ?? "no driver")") }
            }
        }
    }
}

func passthroughCall(_ body: () throws -> Void) throws {
    do {
        try kernelCall(body)
    } catch let e as PassthroughError {
        fail(e.description, code: 1)
    }
}

func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }

extension String {
    func replacingPrefix(_ p: String) -> String { hasPrefix(p) ? String(dropFirst(p.count)) : self }
}
