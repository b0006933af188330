// NIC models for `vnet run`: which `-device MODEL` vnet offers, and what each model can carry.
//
// The list is the one of the QEMU being run: `QEMU -nic model=help` prints "Supported NIC models:" and one name a
// line. Debian's QEMU also prints noise there ("qemu: module ui-ui-gtk not found, do you want to install …"), so a
// line counts only if it is a bare device name. `pvrdma` is in that list but is an RDMA adapter, not an Ethernet
// NIC, so it is not offered. The guide's `virtio` is not a QEMU device name; it stands for `virtio-net-pci`.
//
// Frame sizes: QEMU's ne2k_pci, pcnet, rtl8139 and i8255x (eepro100) models, and the Linux drivers that bind them,
// carry standard Ethernet frames only (payload 1500): eepro100 drops received frames over 1518 bytes unless the
// guest set its "long receive" bit, ne2000 keeps room for one 1514-byte frame in its ring, pcnet moves frames
// through a 4 KiB buffer, and Linux's 8139too caps the MTU at 1500. Other models are not limited here. `vnet run`
// refuses an `--mtu` above what the chosen model carries. Control plane only: Foundation is fine here.

import Foundation

enum NICModels {
    /// Models QEMU lists that are not Ethernet NICs vnet should offer.
    static let excluded: Set<String> = ["pvrdma"]
    /// Names the guide uses that QEMU spells differently.
    static let aliases: [String: String] = ["virtio": "virtio-net-pci"]

    /// The NIC models in the output of `qemu-system-* -nic model=help` (stdout and stderr together is fine):
    /// the bare names after "Supported NIC models:", without noise lines and without `excluded` ones.
    static func parseHelp(_ text: String) -> [String] {
        var models: [String] = []
        var inList = false
        for raw in text.split(omittingEmptySubsequences: true, whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("Supported NIC models") { inList = true; continue }
            guard inList, isDeviceName(line), !excluded.contains(line), !models.contains(line) else { continue }
            models.append(line)
        }
        return models
    }

    /// A QEMU device name: letters, digits, '-', '_', '.', at most 64 of them, starting with a letter or digit.
    static func isDeviceName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, s.unicodeScalars.count <= 64 else { return false }
        guard ("a"..."z").contains(first) || ("A"..."Z").contains(first) || ("0"..."9").contains(first) else { return false }
        return s.unicodeScalars.allSatisfy { c in
            ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || c == "-" || c == "_" || c == "."
        }
    }

    /// The QEMU device for `name`, or nil if `offered` does not have it. A name QEMU lists is taken as it is; an
    /// alias only stands for its device when QEMU has no device of that name (found by FuzzNICModels).
    static func resolve(_ name: String, offered: [String]) -> String? {
        if offered.contains(name) { return name }
        guard let device = aliases[name], offered.contains(device) else { return nil }
        return device
    }

    /// virtio-net devices (the only ones that take `vectors=`, and the only ones vhost-user could drive).
    static func isVirtio(_ device: String) -> Bool { device.hasPrefix("virtio-net") }

    /// The largest MTU (IP payload of one frame) `device` carries, or nil when it takes jumbo frames.
    static func maximumMTU(_ device: String) -> Int? {
        if ["ne2k_pci", "pcnet", "rtl8139"].contains(device) { return 1500 }
        // The i8255x family: QEMU's eepro100 models.
        if device.hasPrefix("i8255") || device == "i82562" || device == "i82801" { return 1500 }
        return nil
    }

    static let pickHintPrefix = "vnet: NIC model:"

    /// The start-up line after the printed QEMU arguments of `vnet user` and `vnet nat`: how to pick another model.
    static func pickHint(netdev: String) -> String {
        "\(pickHintPrefix) for another than virtio, use -device MODEL,netdev=\(netdev) with a MODEL of "
            + "'qemu-system-x86_64 -nic model=help' (e1000, rtl8139, ne2k_pci, pcnet, i82559er, e1000e, vmxnet3, …)"
    }

    /// Runs `qemu -nic model=help` and returns its models. Throws with a one-line reason when it cannot.
    static func query(qemu: String) throws -> [String] {
        let process = Process()
        let pipe = Pipe()
        if qemu.contains("/") {
            guard FileManager.default.isExecutableFile(atPath: qemu) else {
                throw NICModelError("cannot run \(qemu) -nic model=help: no executable file there")
            }
            process.executableURL = URL(fileURLWithPath: qemu)
            process.arguments = ["-nic", "model=help"]
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [qemu, "-nic", "model=help"]
        }
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch {
            throw NICModelError("cannot run \(qemu) -nic model=help: \(error.localizedDescription)")
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let models = parseHelp(String(decoding: data.prefix(1 << 20), as: UTF8.self))
        guard process.terminationStatus == 0, !models.isEmpty else {
            throw NICModelError("\(qemu) -nic model=help listed no NIC models (exit status \(process.terminationStatus))")
        }
        return models
    }
}

struct NICModelError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
