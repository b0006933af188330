// `vnet bridge`: brctl's job (and `ip addr` on the bridge) over rtnetlink.

import ArgumentParser
import VNetKernel
import VNetWire

struct BridgeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bridge",
        abstract: "Create, inspect and change Linux bridges over rtnetlink (no brctl needed).",
        subcommands: [Create.self, Delete.self, AddInterface.self, DeleteInterface.self, STP.self, Show.self, Address.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a bridge and bring it up (brctl addbr).")
        @Argument(help: "Bridge name.") var bridge: String
        @Flag(name: .customLong("down"), help: "Leave the new bridge down.") var down = false
        func run() throws {
            try kernelCall {
                let route = try RouteSocket()
                try route.createLink(name: bridge, kind: "bridge")
                if !down { try route.setUp(try route.requireBridge(bridge)) }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a bridge (brctl delbr); its ports are released.")
        @Argument(help: "Bridge name.") var bridge: String
        func run() throws {
            try kernelCall {
                let route = try RouteSocket()
                try route.deleteLink(try route.requireBridge(bridge))
            }
        }
    }

    struct AddInterface: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "addif", abstract: "Attach interfaces to a bridge and bring them up (brctl addif).")
        @Argument(help: "Bridge name.") var bridge: String
        @Argument(help: "Interfaces to attach.") var interfaces: [String]
        func validate() throws { if interfaces.isEmpty { throw ValidationError("name at least one interface to attach") } }
        func run() throws {
            try kernelCall {
                let route = try RouteSocket()
                let br = try route.requireBridge(bridge)
                for name in interfaces {
                    let link = try route.requireLink(name)
                    if link.master == br.index { throw KernelModeError("\(name) is already a port of \(bridge)") }
                    try route.setMaster(link, bridge: br)
                    try route.setUp(link)
                }
            }
        }
    }

    struct DeleteInterface: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delif", abstract: "Detach interfaces from a bridge (brctl delif).")
        @Argument(help: "Bridge name.") var bridge: String
        @Argument(help: "Interfaces to detach.") var interfaces: [String]
        func validate() throws { if interfaces.isEmpty { throw ValidationError("name at least one interface to detach") } }
        func run() throws {
            try kernelCall {
                let route = try RouteSocket()
                let br = try route.requireBridge(bridge)
                for name in interfaces {
                    let link = try route.requireLink(name)
                    guard link.master == br.index else { throw KernelModeError("\(name) is not a port of \(bridge)") }
                    try route.setMaster(link, bridge: nil)
                }
            }
        }
    }

    struct STP: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "stp", abstract: "Turn the kernel's spanning tree on or off (brctl stp).")
        @Argument(help: "Bridge name.") var bridge: String
        @Argument(help: "on or off.") var state: String
        func validate() throws {
            guard ["on", "off", "yes", "no"].contains(state) else { throw ValidationError("stp: expected on or off, got '\(state)'") }
        }
        func run() throws {
            try kernelCall {
                let route = try RouteSocket()
                try route.setSTP(try route.requireBridge(bridge), on: state == "on" || state == "yes")
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "List bridges and their ports as `brctl show` does.")
        @Argument(help: "Only this bridge.") var bridge: String?
        func run() throws {
            try kernelCall {
                let route = try RouteSocket()
                if let b = bridge { _ = try route.requireBridge(b) }
                print(BrctlShow.render(try route.links(), only: bridge), terminator: "")
            }
        }
    }

    struct Address: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "address", abstract: "Show, add or remove the bridge's IPv4 addresses.",
            discussion: "vnet bridge address br0 | vnet bridge address br0 add 10.0.3.1/24 | vnet bridge address br0 del 10.0.3.1/24")
        @Argument(help: "Bridge name.") var bridge: String
        @Argument(help: "add or del (omit to show).") var action: String?
        @Argument(help: "ADDRESS/PREFIX.") var cidr: String?

        func validate() throws {
            switch action {
            case nil: if cidr != nil { throw ValidationError("address: expected add or del before \(cidr!)") }
            case "add", "del": if cidr == nil { throw ValidationError("address \(action!): give ADDRESS/PREFIX, e.g. 10.0.3.1/24") }
            default: throw ValidationError("address: expected add or del, got '\(action!)'")
            }
        }

        func run() throws {
            var parsed: (IPv4Address, Int)? = nil
            if let c = cidr { parsed = try parseCIDR(c) }
            try kernelCall {
                let route = try RouteSocket()
                let br = try route.requireBridge(bridge)
                switch (action, parsed) {
                case ("add", let (a, p)?): try route.addAddress(br, a, prefixLength: p)
                case ("del", let (a, p)?): try route.deleteAddress(br, a, prefixLength: p)
                default: for a in try route.addresses(of: br) { print(a.cidr) }
                }
            }
        }
    }
}

/// "10.0.3.1/24" -> (address, prefix); the prefix defaults to 24 when missing.
func parseCIDR(_ text: String) throws -> (IPv4Address, Int) {
    let parts = text.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count <= 2, let a = IPv4Address(parts[0]) else { throw ValidationError("'\(text)' is not ADDRESS/PREFIX") }
    var p = 24
    if parts.count == 2 {
        guard let n = Int(parts[1]), (0 ... 32).contains(n) else { throw ValidationError("'\(text)': the prefix must be 0-32") }
        p = n
    }
    return (a, p)
}

/// Runs kernel-facing work; its errors become one clear line and exit status 1.
func kernelCall<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as KernelError {
        fail(e.description, code: 1)
    } catch let e as KernelModeError {
        fail(e.description, code: 1)
    }
}
