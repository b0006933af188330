// Embedding vnet: a NAT network (DHCP, DNS, NAT to the host) in a ServiceGroup, with a QEMU guest on it.
// Usage: vnet-embed-example SOCKET [VFKIT-SOCKET] [-- qemu-system-x86_64 ARGS...]
import Foundation
import Logging
import ServiceLifecycle
import VNet

func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }   // unbuffered

@main
struct EmbedQEMU {
    static func main() async throws {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)   // the executable, not the library, picks the backend
        let logger = Logger(label: "embed-example")
        var args = Array(CommandLine.arguments.dropFirst())
        var qemuCommand: [String] = []
        if let i = args.firstIndex(of: "--") { qemuCommand = Array(args[(i + 1)...]); args.removeSubrange(i...) }
        guard let socket = args.first else { fatalError("usage: vnet-embed-example SOCKET [VFKIT-SOCKET] [-- QEMU ARGS...]") }

        var config = VirtualNetwork.Configuration()
        config.subnet = "192.168.127.0/24"
        config.dnsRecords = [DNSRecord(name: "host.internal", type: .a, value: "192.168.127.1")]
        let network = try VirtualNetwork(configuration: config, logger: logger)
        try await network.listen(unixPath: socket, framing: .qemuStream)   // QEMU's -netdev stream
        if args.count > 1 { try await network.listen(unixPath: args[1], framing: .vfkit) }   // vfkit, krunkit
        let web = try await network.addPortForward(PortForward(.tcp, hostPort: 0, guest: .address("192.168.127.2"), guestPort: 80))
        say("ready: port forward \(web)")

        let qemu = Process()
        if !qemuCommand.isEmpty {
            qemu.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            qemu.arguments = qemuCommand + ["-netdev", "stream,id=n0,server=off,addr.type=unix,addr.path=\(socket)",
                                            "-device", "virtio-net-pci,netdev=n0"]
            try qemu.run()
        }
        let events = Task {
            for await event in network.leaseEvents() {
                switch event {
                case .granted(let lease): say("lease granted: \(lease.mac) \(lease.address) \(lease.hostName ?? "-")")
                case .released(let lease): say("lease released: \(lease.mac) \(lease.address)")
                }
            }
        }
        let group = ServiceGroup(configuration: .init(services: [.init(service: network)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()   // until SIGTERM or SIGINT
        events.cancel()
        if qemu.isRunning { qemu.terminate() }
        say("stopped")
    }
}
