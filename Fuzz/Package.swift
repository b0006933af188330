// swift-tools-version:6.0
// libFuzzer targets for vnet's parsers and for the whole gateway. A separate package so the main build and
// `swift test` never see -sanitize=fuzzer. Build and run everything with ../scripts/fuzz [SECONDS].
import PackageDescription

let targets = ["FuzzEthernetARP", "FuzzIPv4Fragments", "FuzzICMP", "FuzzUDP", "FuzzTCP", "FuzzDHCP", "FuzzDNS",
               "FuzzStreamFraming", "FuzzGateway", "FuzzControl", "FuzzTFTP", "FuzzIPv6", "FuzzFastPaths", "FuzzSlirp4netnsAPI", "FuzzNICModels",
               "FuzzVhostUserMessage", "FuzzVhostUserRing", "FuzzVxlan"]

let package = Package(
    name: "VNetFuzz",
    dependencies: [.package(name: "vnet", path: "..")],
    targets: [
        // The stub host and frame builders every target shares. VNetRuntime is the main package's library
        // product; the fuzzers use only its pure dependencies (VNetWire, VNetGateway, VNetServices, VNetTransport).
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver", .product(name: "VNetRuntime", package: "vnet")]),
        .target(name: "CFuzzDriver"),
    ] + targets.map { .executableTarget(name: $0, dependencies: ["FuzzSupport"], path: "Sources/\($0)") }
)
