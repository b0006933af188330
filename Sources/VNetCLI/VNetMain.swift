// vnet: QEMU/KVM virtual networking. The CLI only parses arguments and wires modules together.
//
// The commands live in this library target (VNetCLI) behind the thin `vnet` executable, which owns the
// process-wide choices: it installs the logging and metrics backends through `CLIBootstrap` and calls
// `VNetMain.main()`. Nothing here bootstraps a backend on its own.
//
// Errors: bad arguments print one line, `vnet: error: …`, and exit 2; a run-time failure to start (socket in
// use, no permission) prints one line and exits 1. Never a stack trace.

import ArgumentParser
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// The process-wide backends, installed by the executable before `VNetMain.main()`.
public enum CLIBootstrap {
    /// Bootstraps logging at a level (the executable's `LoggingSystem.bootstrap`).
    nonisolated(unsafe) public static var logging: (Logger.Level) -> Void = { _ in }
    /// Bootstraps a metrics backend and returns its text renderer (nil: metrics are not available).
    nonisolated(unsafe) public static var metrics: () -> (@Sendable () -> [UInt8])? = { nil }
}

struct Vnet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vnet",
        abstract: "QEMU/KVM virtual networking: user-mode networks, switches, NAT.",
        subcommands: [UserCommand.self, SwitchCommand.self, NatCommand.self, CtlCommand.self, RunCommand.self, BridgeCommand.self,
                      TapCommand.self, TapHelperCommand.self, PassthroughCommand.self, Slirp4netnsHelpEntry.self],
        defaultSubcommand: nil)
}

func fail(_ message: String, code: Int32) -> Never {
    var first = message.split(separator: "\n").first.map(String.init) ?? "failed"
    if first.hasPrefix("Error: ") { first.removeFirst(7) }
    let line = "vnet: error: " + first + "\n"
    _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
    exit(code)
}

public enum VNetMain {
    /// Parses the command line and runs the command; never returns.
    public static func main() -> Never {
        do {
            var arguments = Array(CommandLine.arguments.dropFirst())
            // slirp4netns's command line: `vnet slirp4netns ARGS…`, or vnet started as `slirp4netns` (Slirp4netnsCommand.swift).
            let invokedAs = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? ""
            if invokedAs == "slirp4netns" || arguments.first == "slirp4netns" {
                if invokedAs != "slirp4netns" { arguments.removeFirst() }
                do { try Slirp4netnsCommand.run(arguments) } catch let e as ValidationError { fail(e.message, code: 2) } catch { fail("\(error)", code: 1) }
                exit(0)
            }
            if arguments.first == "run", let dash = arguments.firstIndex(of: "--") {
                RunCommand.qemuCommand = Array(arguments[(dash + 1)...])
                arguments = Array(arguments[..<dash])
            }
            var command = try Vnet.parseAsRoot(arguments)
            do {
                try command.run()
            } catch let e as ValidationError {
                fail(e.message, code: 2)
            } catch {
                if Vnet.exitCode(for: error) == .success { Vnet.exit(withError: error) }  // --help inside a subcommand
                fail("\(error)", code: 1)
            }
        } catch {
            let code = Vnet.exitCode(for: error)
            if code == .success {
                Vnet.exit(withError: error)  // --help, --version
            }
            let text = Vnet.message(for: error)
            fail(text.isEmpty ? "invalid arguments" : text, code: 2)
        }
        exit(0)
    }
}

/// Lists `vnet slirp4netns` in `vnet --help`; the command itself is dispatched before parsing (VNetMain.main).
struct Slirp4netnsHelpEntry: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slirp4netns",
        abstract: "slirp4netns 1.2.0's command line (for rootlesskit and podman); also when vnet is run as 'slirp4netns'.")
}
