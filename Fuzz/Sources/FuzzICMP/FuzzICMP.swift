// Fuzz target: ICMP from the guest (echo answered locally or NAT'd, everything else dropped) and ICMP from the
// host (echo replies and errors arriving on an echo flow). The input is one ICMP message; the first byte of it
// also picks the host reply's shape.
import FuzzSupport

@_cdecl("FuzzICMP_main")
public func fuzzICMPMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzICMP)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzICMP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let input = Array(UnsafeRawBufferPointer(start: data, count: size))
    _ = input.withUnsafeBytes { try? ICMPv4Header.parse($0) }
    let (host, g) = reusedGateway()
    for dst in [gatewayIP, dnsIP, externalIP, IPv4Address(169, 254, 169, 254)] {
        deliver(g, guestFrame(dst: dst, proto: .icmp, input), now: startTime)
    }
    // An echo flow, then host events for it built from the input.
    var echo = [UInt8](repeating: 0, count: 16)
    echo[0] = 8; echo[4] = 0x12; echo[5] = 0x34
    deliver(g, guestFrame(dst: externalIP, proto: .icmp, echo), now: startTime)
    let kind = input.first ?? 0
    host.pending = [HostReceiveScript(kind: kind % 4, identifier: kind & 4 == 0 ? nil : 0x1234, sequence: UInt16(size),
                                      offender: kind & 8 == 0 ? externalIP : .loopback, bytes: input)]
    for i in 0 ..< 2 { g.hostReadable(FlowTag(kind: .icmp, index: i), now: startTime) }
    drainAndCheck(g)
    return 0
}
