// `vnet tap`: TAP devices for QEMU's `-netdev tap` (tunctl's and qemu-ifup's job).
//
// `create` makes a persistent tap and returns; `delete` removes one; `run` makes one for as long as vnet runs
// (QEMU opens it by name) and removes it on SIGINT/SIGTERM/SIGHUP unless --keep. Scripts follow QEMU's
// semantics: `--script PATH` runs `PATH IFNAME` once the tap exists (and after --bridge attached it),
// `--downscript PATH` runs `PATH IFNAME` before it is removed; "no" skips them.

import ArgumentParser
import CVNetShim
import VNetHost
import VNetKernel
#if canImport(Glibc)
import Glibc
#endif

struct TapDeviceOptions: ParsableArguments {
    @Argument(help: "The tap's name (e.g. tap0).") var ifname: String
    @Option(name: .customLong("owner"), help: "User (name or uid) allowed to open the tap, e.g. the user running QEMU.") var owner: String?
    @Option(name: .customLong("group"), help: "Group (name or gid) allowed to open the tap.") var group: String?
    @Flag(name: .customLong("vnet-hdr"), help: "Create it with IFF_VNET_HDR (QEMU's vnet_hdr=on).") var vnetHeader = false
    @Flag(name: .customLong("multiqueue"), help: "Create it with IFF_MULTI_QUEUE (QEMU's queues=N).") var multiQueue = false
    @Option(name: .customLong("bridge"), help: "Attach the tap to this bridge.") var bridge: String?
    @Option(name: .customLong("mtu"), help: "MTU (default: the bridge's with --bridge, else the kernel's).") var mtu: UInt32?

    func tapOptions() throws -> TapOptions {
        TapOptions(name: ifname, owner: try owner.map(resolveUser), group: try group.map(resolveGroup),
                   vnetHeader: vnetHeader, multiQueue: multiQueue)
    }

    /// Brings the tap up and attaches it to --bridge (taking the bridge's MTU unless --mtu says otherwise).
    func configure(_ name: String, route: RouteSocket) throws {
        let tap = try route.requireLink(name, role: "tap")
        var wantMTU = mtu
        if let b = bridge {
            let br = try route.requireBridge(b)
            if wantMTU == nil, let m = br.mtu, m != tap.mtu { wantMTU = m }
            if let m = wantMTU { try route.setMTU(tap, m) }
            try route.setMaster(tap, bridge: br)
        } else if let m = wantMTU {
            try route.setMTU(tap, m)
        }
        try route.setUp(tap)
    }

    func qemuArguments(_ name: String) -> String {
        "-netdev tap,id=n0,ifname=\(name),script=no,downscript=no" + (vnetHeader ? ",vnet_hdr=on" : "")
            + (multiQueue ? ",queues=2 -device virtio-net-pci,netdev=n0,mq=on" : " -device virtio-net-pci,netdev=n0")
    }
}

func resolveUser(_ s: String) throws -> UInt32 {
    if let n = UInt32(s) { return n }
    guard let pw = getpwnam(s) else { throw ValidationError("no such user '\(s)'") }
    return pw.pointee.pw_uid
}

func resolveGroup(_ s: String) throws -> UInt32 {
    if let n = UInt32(s) { return n }
    guard let gr = getgrnam(s) else { throw ValidationError("no such group '\(s)'") }
    return gr.pointee.gr_gid
}

struct TapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap",
        abstract: "Create and remove TAP devices for QEMU's -netdev tap, with QEMU's ifup/ifdown script semantics.",
        subcommands: [Create.self, Delete.self, Run.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a persistent tap, run --script, and return.")
        @OptionGroup var device: TapDeviceOptions
        @Option(name: .customLong("script"), help: "Run 'PATH IFNAME' once the tap is up ('no': none).") var script: String?

        func run() throws {
            let tapOptions = try device.tapOptions()
            try kernelCall {
                let route = try RouteSocket()
                let name = try TapDevice.createPersistent(tapOptions, route: route)
                do {
                    try device.configure(name, route: route)
                    if let s = InterfaceScript.path(script) { try InterfaceScript.run(s, interface: name, role: "script") }
                } catch {
                    try? TapDevice.delete(name, route: route)
                    throw error
                }
                print("vnet: created \(name); start QEMU with: \(device.qemuArguments(name))")
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Run --downscript, then delete a tap.")
        @Argument(help: "The tap's name.") var ifname: String
        @Option(name: .customLong("downscript"), help: "Run 'PATH IFNAME' before the tap goes ('no': none).") var downscript: String?

        func run() throws {
            try kernelCall {
                let route = try RouteSocket()
                let link = try route.requireLink(ifname, role: "tap")
                guard link.kind == "tun" else { throw KernelModeError("\(ifname) is not a tap") }
                if let s = InterfaceScript.path(downscript) { try InterfaceScript.run(s, interface: ifname, role: "downscript") }
                try TapDevice.delete(ifname, route: route)
            }
        }
    }

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "run",
            abstract: "Create a tap for as long as vnet runs: script at start, downscript and removal on SIGINT/SIGTERM.")
        @OptionGroup var device: TapDeviceOptions
        @Option(name: .customLong("script"), help: "Run 'PATH IFNAME' once the tap is up ('no': none).") var script: String?
        @Option(name: .customLong("downscript"), help: "Run 'PATH IFNAME' at teardown ('no': none).") var downscript: String?
        @Flag(name: .customLong("keep"), help: "Leave the tap in place at exit (the downscript still runs).") var keep = false

        func run() throws {
            let tapOptions = try device.tapOptions()
            // Signals are blocked before anything is made, so a SIGTERM during setup still tears down.
            let loop = try EventLoop(signals: .stopOnly)
            try kernelCall {
                let route = try RouteSocket()
                let name = try TapDevice.createPersistent(tapOptions, route: route)
                do {
                    try device.configure(name, route: route)
                    if let s = InterfaceScript.path(script) { try InterfaceScript.run(s, interface: name, role: "script") }
                } catch {
                    try? TapDevice.delete(name, route: route)
                    throw error
                }
                print("vnet: tap \(name) up; start QEMU with: \(device.qemuArguments(name))")
                print("vnet: ready")
                fflush(nil)
                try loop.run(turn: { _ in nil }, dispatch: { _, _, _, _ in })
                let sig = loop.stopSignal
                var failure: Error? = nil
                if let s = InterfaceScript.path(downscript) {
                    do { try InterfaceScript.run(s, interface: name, role: "downscript") } catch { failure = error }
                }
                if !keep { try TapDevice.delete(name, route: route) }
                print("vnet: stopped (signal \(sig))\(keep ? "; kept \(name)" : "; removed \(name)")")
                fflush(nil)
                if let f = failure { throw f }
            }
        }
    }
}
