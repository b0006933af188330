// Fuzz target: DHCP messages (BOOTP header, cookie, options) through the parser, the server and the gateway.
// The input is the UDP payload of one client message.
import FuzzSupport

@_cdecl("FuzzDHCP_main")
public func fuzzDHCPMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzDHCP)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDHCP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    if let m = try? DHCPMessage.parse(input) {
        var server = DHCPServer(config: DHCPConfig(network: IPv4Network(address: IPv4Address(10, 0, 2, 0), prefixLength: 24),
                                                   serverAddress: gatewayIP, router: gatewayIP, dnsServers: [dnsIP],
                                                   poolStart: guestIP, poolSize: 2, searchDomains: ["a.test"], hostName: "h"))
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 8)
        defer { out.deallocate() }
        for _ in 0 ..< 3 {
            if case .reply(let r) = server.handle(m, now: startTime, into: out) {
                precondition(r.length <= out.count)
                _ = try? DHCPMessage.parse(UnsafeRawBufferPointer(out.slice(0 ..< r.length)))
            }
        }
    }
    var udp = [UInt8](repeating: 0, count: 8) + Array(input)
    udp[0] = 0; udp[1] = 68; udp[2] = 0; udp[3] = 67
    let len = min(udp.count, 65_535 - 20)
    udp[4] = UInt8(len >> 8); udp[5] = UInt8(len & 0xFF)
    let (_, g) = reusedGateway()
    deliver(g, guestFrame(dst: .broadcast, proto: .udp, udp, src: .any, ethDst: .broadcast), now: startTime)
    deliver(g, guestFrame(dst: gatewayIP, proto: .udp, udp), now: startTime)
    drainAndCheck(g)
    return 0
}
