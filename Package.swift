// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "vnet",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "vnet", targets: ["vnet"]),
        // The embeddable network: `VirtualNetwork`, a swift-service-lifecycle `Service`.
        .library(name: "VNet", targets: ["VNet"]),
        .library(name: "VNetRuntime", targets: ["VNetRuntime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // Tiny C target: Linux APIs Glibc does not import (epoll, mmsghdr, tun, setns).
        .target(name: "CVNetShim"),
        // Bytes <-> values. Pure: no Foundation, no syscalls.
        .target(name: "VNetWire"),
        // Preallocated frame queues, time values and the one registry of event kinds. Pure.
        .target(name: "VNetBuffers"),
        // DHCP and TFTP servers as pure functions over wire values.
        .target(name: "VNetServices", dependencies: ["VNetWire", "VNetBuffers"]),
        // vnet's host on the segment: dispatch, services, UDP/ICMP NAT. Host I/O through a protocol.
        .target(name: "VNetGateway", dependencies: ["VNetWire", "VNetServices", "VNetBuffers"]),
        // The learning L2 switch: forwarding database, VLANs, ports. Pure.
        .target(name: "VNetSwitch", dependencies: ["VNetWire", "VNetBuffers"]),
        // Syscalls (sockets, epoll, signals, netns) and the one event loop every mode runs on.
        .target(name: "VNetHost", dependencies: ["CVNetShim", "VNetBuffers"]),
        // QEMU stream/dgram framing.
        .target(name: "VNetTransport", dependencies: ["VNetWire", "VNetBuffers"]),
        // Wiring: event loop, ports, real host sockets behind the gateway.
        .target(name: "VNetRuntime", dependencies: [
            "VNetWire", "VNetBuffers", "VNetServices", "VNetGateway", "VNetHost", "VNetTransport", "VNetSwitch", "CVNetShim",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
        ]),
        // Kernel modes: rtnetlink (bridges, links, addresses), TAPs, kernel NAT (nftables), PCI passthrough (sysfs).
        .target(name: "VNetKernel", dependencies: ["CVNetShim", "VNetWire", "VNetBuffers", "VNetServices", "VNetHost"]),
        // The public library API: one network object (switch + gateway) that VM managers embed.
        .target(name: "VNet", dependencies: [
            "VNetRuntime", "VNetGateway", "VNetSwitch", "VNetServices", "VNetWire", "VNetBuffers", "VNetHost", "CVNetShim",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The commands: argument parsing and wiring only. Backends (logging, metrics) come from the executable.
        .target(name: "VNetCLI", dependencies: [
            "VNet", "VNetRuntime", "VNetGateway", "VNetSwitch", "VNetServices", "VNetWire", "VNetBuffers", "VNetKernel", "VNetHost", "CVNetShim",
            .product(name: "Yams", package: "Yams"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "vnet", dependencies: [
            "VNetCLI",
            .product(name: "Logging", package: "swift-log"),
            // Only the executable picks the metrics backend (Prometheus) and bootstraps it.
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        // The "Embedding vnet" example of README: a network, a QEMU guest on it, a ServiceGroup.
        .executableTarget(name: "vnet-embed-example", dependencies: [
            "VNet",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], path: "Examples/EmbedQEMU"),
        .testTarget(name: "VNetWireTests", dependencies: ["VNetWire"], resources: [.copy("Fixtures")]),
        .testTarget(name: "VNetBuffersTests", dependencies: ["VNetBuffers"]),
        .testTarget(name: "VNetServicesTests", dependencies: ["VNetServices", "VNetWire"]),
        .testTarget(name: "VNetGatewayTests", dependencies: ["VNetGateway", "VNetWire", "VNetServices", "VNetBuffers", "VNetTransport"]),
        .testTarget(name: "VNetSwitchTests", dependencies: ["VNetSwitch", "VNetWire", "VNetBuffers"]),
        .testTarget(name: "VNetKernelTests", dependencies: ["VNetKernel", "VNetServices", "VNetWire"]),
        .testTarget(name: "VNetTransportTests", dependencies: ["VNetTransport", "VNetWire", "VNetBuffers"]),
        .testTarget(name: "VNetRuntimeTests", dependencies: ["VNetRuntime", "VNetHost", "VNetGateway", "VNetWire", "VNetBuffers"]),
        .testTarget(name: "VNetCLITests", dependencies: ["VNetCLI"]),
        .testTarget(name: "VNetTests", dependencies: [
            "VNet", "VNetWire", "vnet-embed-example",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], resources: [.copy("Fixtures")]),
    ]
)
