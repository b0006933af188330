// Fuzz target: UDP from the guest (NAT, DNS, DHCP port, broadcast, loopback mapping) and datagrams from the
// host back to the guest. The input is one UDP datagram (header included); its checksum is fixed when its
// length field allows.
import FuzzSupport

@_cdecl("FuzzUDP_main")
public func fuzzUDPMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzUDP)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzUDP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let input = Array(UnsafeRawBufferPointer(start: data, count: size))
    _ = input.withUnsafeBytes { try? UDPHeader.parse($0) }
    let (host, g) = reusedGateway()
    for dst in [externalIP, dnsIP, gatewayIP, IPv4Address.broadcast, IPv4Address(10, 0, 2, 255)] {
        deliver(g, guestFrame(dst: dst, proto: .udp, input, ethDst: dst.rawValue & 0xFF == 0xFF ? .broadcast : gatewayMAC), now: startTime)
    }
    deliver(g, guestFrame(dst: .broadcast, proto: .udp, input, src: .any, ethDst: .broadcast), now: startTime)
    // The host answers every flow with the input as payload, then as an ICMP error.
    host.pending = [HostReceiveScript(kind: 0, identifier: nil, sequence: 0, offender: externalIP, bytes: input),
                    HostReceiveScript(kind: 2, identifier: nil, sequence: 0x0303, offender: .loopback, bytes: input)]
    for i in 0 ..< 4 { g.hostReadable(FlowTag(kind: .udp, index: i), now: startTime) }
    g.poll(now: startTime + .seconds(3))
    drainAndCheck(g)
    return 0
}
