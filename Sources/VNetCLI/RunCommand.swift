// `vnet run [OPTIONS] -- qemu-system-x86_64 ARGS…`: a user-mode network for one QEMU, for as long as it runs.
//
// vnet binds a unix socket in a private temporary folder, appends `-netdev stream,…` (reaching that socket)
// and `-device MODEL,netdev=ID` to QEMU's arguments, starts QEMU (stdin, stdout and stderr are QEMU's; vnet's
// own start-up lines go to stderr), serves the network until QEMU exits, then removes the socket and folder
// and exits with QEMU's status. `--device` is checked against that QEMU's `-nic model=help` (NICModels.swift),
// with `--mac`, `--vectors` (virtio only) and the model's largest MTU; `--list-models` prints the list. SIGINT/SIGTERM to vnet are passed on to QEMU. One command, like `pasta -- cmd`.
// Every `vnet user` option applies (QEMU's option string, --control, --pcap, --metrics, …) except the
// transport flags: the transport is always this private socket.

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
        guard options.transportIsDefault else {
            throw ValidationError("vnet run chooses the transport itself: drop --socket, --listen, --connect, --dgram and --tap")
        }
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
