// `vnet run [OPTIONS] -- qemu-system-x86_64 ARGS…`: a user-mode network for one QEMU, for as long as it runs.
//
// vnet binds a unix socket in a private temporary folder, appends `-netdev stream,…` (reaching that socket)
// and `-device MODEL,netdev=ID` to QEMU's arguments, starts QEMU (stdin, stdout and stderr are QEMU's; vnet's
// own start-up lines go to stderr), serves the network until QEMU exits, then removes the socket and folder
// and exits with QEMU's status. `--device` is checked against that QEMU's `-nic model=help` (NICModels.swift),
// with `--mac`, `--vectors` (virtio only) and the model's largest MTU; `--list-models` prints the list. SIGINT/SIGTERM to vnet are passed on to QEMU. One command, like `pasta -- cmd`.
// Every `vnet user` option applies (QEMU's option string, --control, --pcap, --metrics, …) except the
// transport flags: the transport is always this private socket, or with `--vhost-user PATH` a vhost-user socket
// at PATH: then vnet appends the chardev (reconnect=1), `-netdev vhost-user`, the virtio-net-pci device
// (vectors=0 when the command does not ask for KVM and its QEMU is older than 8.0) and a shared memfd of -m's size as NUMA node 0
// (`VhostUserRunPlan`), refusing a command that places guest memory itself or has another NIC model.

import ArgumentParser
import CVNetShim
import VNetHost
import VNetRuntime
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run QEMU with a user-mode network: vnet run [OPTIONS] -- qemu-system-x86_64 ARGS…",
        discussion: """
        vnet appends '-netdev stream,id=ID,server=off,addr.type=unix,addr.path=SOCKET -device MODEL,netdev=ID' to
        QEMU's arguments (ID is the option string's id=, else vnet0), runs QEMU and tears the network down when it exits.
        With --vhost-user PATH it appends '-chardev socket,…,path=PATH,reconnect=1 -netdev vhost-user,… -device
        virtio-net-pci,…[,vectors=0] -object memory-backend-memfd,…,size=<-m>,share=on -numa node,memdev=…' instead.
        """)

    @OptionGroup var user: UserCommand

    @Option(name: .customLong("device"),
            help: "The guest NIC model appended as -device MODEL,netdev=ID (default virtio-net-pci; 'virtio' is an alias), checked against QEMU's list.")
    var device: String?

    @Option(name: .customLong("mac"), help: "The guest NIC's MAC address (mac=).")
    var mac: String?

    @Option(name: .customLong("vectors"), help: "MSI-X vectors of a virtio NIC (vectors=).")
    var vectors: Int?

    @Flag(name: .customLong("list-models"), help: "Print the NIC models QEMU offers (from QEMU -nic model=help) and exit.")
    var listModels = false

    /// The QEMU command line: main.swift takes everything after `vnet run … --` out before parsing (an
    /// argument array cannot follow the option string's array).
    nonisolated(unsafe) static var qemuCommand: [String] = []

    func run() throws {
        let qemu = RunCommand.qemuCommand
        if listModels {
            let models = try queryModels(qemu.first ?? "qemu-system-x86_64")
            print(models.joined(separator: "\n"))
            return
        }
        guard !qemu.isEmpty else { throw ValidationError("missing QEMU command: vnet run [OPTIONS] -- qemu-system-x86_64 ARGS…") }
        let nic = try nicDevice(qemu: qemu[0])
        var (options, extra) = try user.makeOptions()
        if options.sandbox {
            throw ValidationError("--sandbox is not available with vnet run: it waits for and stops QEMU, which the sandbox forbids; run 'vnet user --sandbox' and QEMU separately")
        }
        let vhostUser = user.vhostUserPath
        guard options.transportIsDefault || vhostUser != nil else {
            throw ValidationError("vnet run chooses the transport itself: drop --socket, --listen, --connect, --dgram and --tap")
        }
        if let path = vhostUser { try runVhostUser(qemu: qemu, nic: nic, socket: path, options: options, extra: extra) }
        extra.removeAll { $0.hasPrefix("vnet: start QEMU with:") || $0.hasPrefix(NICModels.pickHintPrefix) }
        guard let dir = Sys.makeTemporaryDirectory("/tmp/vnet-run-XXXXXX") else {
            throw RuntimeFailure("cannot create a temporary folder: \(Sys.errnoString(errno))")
        }
        let socket = dir + "/net.sock"
        defer { Sys.unlink(socket); Sys.removeDirectory(dir) }   // on the error paths; the normal end cleans up before exit()
        options.transport = .unixListen(path: socket)
        let id = options.gateway.id ?? "vnet0"
        options.nicModel = String(nic.prefix { $0 != "," })
        let argv = qemu + ["-netdev", "stream,id=\(id),server=off,addr.type=unix,addr.path=\(socket)",
                           "-device", "\(nic),netdev=\(id)"]

        let (runtime, lines) = try user.startRuntime(options, extra: extra)
        runtime.announceFD = 2
        var pid: Int32 = 0
        let pidfd = Sys.spawn(argv, pid: &pid)
        guard pidfd >= 0 else { throw RuntimeFailure("cannot start \(qemu[0]): \(String(cString: strerror(-pidfd)))") }
        try runtime.stopWhenReadable(pidfd)
        try runtime.run(extraStartupLines: lines + ["vnet: started \(qemu[0]) (pid \(pid)) with -netdev stream,id=\(id) on \(socket)"])
        // The loop ends when QEMU exits, or when vnet was asked to stop: then QEMU is asked too.
        let status = Sys.childStatus(pid) ?? Sys.terminateChild(pid)
        let code = max(status, 0)
        Sys.close(pidfd)
        Sys.unlink(socket)
        Sys.removeDirectory(dir)
        Sys.writeLine(2, "vnet: \(qemu[0]) exited with status \(code); network torn down")
        Glibc.exit(Int32(code))
    }

    /// `vnet run --vhost-user PATH`: QEMU reaches vnet over vhost-user at PATH, with the shared memory it needs (a
    /// memfd backend of the size -m gives, 128M by default, as NUMA node 0) added here; `vectors=0` when the guest
    /// runs without KVM (VhostUserQEMU). Refuses a command that places memory itself (-numa, a memory backend) and
    /// a NIC model other than virtio-net.
    func runVhostUser(qemu: [String], nic: String, socket: String, options: RuntimeOptions, extra: [String]) throws -> Never {
        var options = options
        let model = String(nic.prefix { $0 != "," })
        guard model == "virtio-net-pci" else {
            throw ValidationError("--vhost-user needs a virtio-net-pci NIC, not \(model)")
        }
        let plan = try VhostUserRunPlan(qemu: qemu)
        options.transport = .transport(PluggedTransport(VhostUserTransportFactory(path: socket)))
        options.transportIsDefault = false
        options.nicModel = model
        let id = options.gateway.id ?? "vnet0"
        var device = "\(nic),netdev=\(id)"
        if plan.noMSIX && vectors == nil { device += ",vectors=0" }
        let argv = qemu + ["-chardev", "socket,id=\(id)-chr,path=\(socket),reconnect=1",
                           "-netdev", "vhost-user,id=\(id),chardev=\(id)-chr",
                           "-device", device,
                           "-object", "memory-backend-memfd,id=\(id)-mem,size=\(plan.memory),share=on",
                           "-numa", "node,memdev=\(id)-mem"]
        let cleaned = extra.filter { !$0.hasPrefix("vnet: start QEMU with:") && !$0.hasPrefix(NICModels.pickHintPrefix) }
        let (runtime, lines) = try user.startRuntime(options, extra: cleaned)
        runtime.announceFD = 2
        var pid: Int32 = 0
        let pidfd = Sys.spawn(argv, pid: &pid)
        guard pidfd >= 0 else { throw RuntimeFailure("cannot start \(qemu[0]): \(String(cString: strerror(-pidfd)))") }
        try runtime.stopWhenReadable(pidfd)
        try runtime.run(extraStartupLines: lines + ["vnet: started \(qemu[0]) (pid \(pid)) with -netdev vhost-user,id=\(id) on \(socket), memfd \(plan.memory)\(plan.noMSIX ? ", vectors=0 (no KVM, QEMU before 8.0)" : "")"])
        let status = Sys.childStatus(pid) ?? Sys.terminateChild(pid)
        let code = max(status, 0)
        Sys.close(pidfd)
        Sys.unlink(socket)
        Sys.writeLine(2, "vnet: \(qemu[0]) exited with status \(code); network torn down")
        Glibc.exit(Int32(code))
    }

    func queryModels(_ qemu: String) throws -> [String] {
        do { return try NICModels.query(qemu: qemu) } catch let error as NICModelError {
            throw ValidationError(error.description)
        }
    }

    /// The `-device` value before `,netdev=`: the model (checked against QEMU's list when given), mac= and vectors=.
    func nicDevice(qemu: String) throws -> String {
        var model = "virtio-net-pci"
        if let device {
            let offered = try queryModels(qemu)
            guard let resolved = NICModels.resolve(device, offered: offered) else {
                throw ValidationError("--device \(device) is not a NIC model of \(qemu) (vnet run --list-models lists them)")
            }
            model = resolved
        }
        if let limit = NICModels.maximumMTU(model), user.mtu > limit {
            throw ValidationError("--mtu \(user.mtu) is more than \(model) carries (\(limit)); pick a smaller --mtu or another --device")
        }
        var value = model
        if let mac {
            guard let parsed = MACAddress(mac) else {
                throw ValidationError("--mac \(mac) is not a MAC address (xx:xx:xx:xx:xx:xx)")
            }
            guard !parsed.isMulticast else {
                throw ValidationError("--mac \(mac) is a multicast address; a NIC needs a unicast one")
            }
            value += ",mac=\(parsed)"
        }
        if let vectors {
            guard NICModels.isVirtio(model) else {
                throw ValidationError("--vectors applies to virtio NICs only, not \(model)")
            }
            guard (0...2048).contains(vectors) else { throw ValidationError("--vectors must be between 0 and 2048") }
            value += ",vectors=\(vectors)"
        }
        return value
    }

}

/// What `vnet run --vhost-user` reads from the QEMU command: the RAM size (-m) for the shared memfd, whether the
/// guest runs under KVM, and that nothing else places guest memory.
struct VhostUserRunPlan {
    var memory = "128M"
    var noMSIX = true

    init(qemu: [String]) throws {
        var kvm = false
        var i = 1
        while i < qemu.count {
            let a = qemu[i]
            let value = i + 1 < qemu.count ? qemu[i + 1] : ""
            switch a {
            case "-numa", "--numa":
                throw ValidationError("--vhost-user: the QEMU command already has -numa; vnet run adds the memfd NUMA node vhost-user needs itself (drop it, or run 'vnet user --vhost-user' and QEMU separately)")
            case "-object", "--object" where value.hasPrefix("memory-backend"):
                throw ValidationError("--vhost-user: the QEMU command already has a memory backend (\(value.prefix { $0 != "," })); vnet run adds a shared memfd itself")
            case "-m", "--m":
                memory = try VhostUserRunPlan.size(value)
            case "-enable-kvm", "--enable-kvm":
                kvm = true
            case "-accel", "--accel":
                kvm = value.hasPrefix("kvm")
            case "-machine", "--machine", "-M":
                if value.contains("accel=kvm") { kvm = true }
                if value.contains("memory-backend=") {
                    throw ValidationError("--vhost-user: the QEMU command already names a memory backend (-machine memory-backend=); vnet run adds a shared memfd itself")
                }
            case "-device", "--device":
                let model = String(value.prefix { $0 != "," })
                if value.contains("netdev="), model != "virtio-net-pci" {
                    throw ValidationError("--vhost-user: the QEMU command has a \(model) NIC; vhost-user serves virtio-net only")
                }
            default:
                break
            }
            i += 1
        }
        // QEMU before 8.0 crashes in vhost_net_start -> msix_set_vector_notifiers with vhost-user and MSI-X when
        // there is no KVM irqfd (TCG): INTx (vectors=0) avoids that path (VhostUserQEMU in VhostUserPort.swift).
        noMSIX = VhostUserQEMU.needsNoMSIX(kvm: kvm, version: kvm ? nil : VhostUserQEMU.version(of: qemu[0]))
    }

    /// -m's size (`512`, `512M`, `1G`, `size=1G,slots=2,maxmem=4G`) as a QEMU size string; a bare number is MiB.
    static func size(_ value: String) throws -> String {
        var v = value
        if let part = value.split(separator: ",").first(where: { $0.hasPrefix("size=") }) {
            v = String(part.dropFirst(5))
        } else if let first = value.split(separator: ",").first {
            v = String(first)
        }
        guard let last = v.last, !v.isEmpty else { throw ValidationError("--vhost-user: cannot read the size in -m \(value)") }
        let digits = last.isNumber ? v : String(v.dropLast())
        guard !digits.isEmpty, digits.allSatisfy(\.isNumber), last.isNumber || "kKmMgGtT".contains(last) else {
            throw ValidationError("--vhost-user: cannot read the size in -m \(value)")
        }
        return last.isNumber ? v + "M" : digits + String(last).uppercased()
    }
}
