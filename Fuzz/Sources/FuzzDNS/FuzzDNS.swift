// Fuzz target: DNS queries (header, question walk, SERVFAIL rewriting) and the forwarder. The input is one DNS
// message: sent by the guest to 10.0.2.3:53 with and without upstreams, and returned by the upstream.
import FuzzSupport

@_cdecl("FuzzDNS_main")
public func fuzzDNSMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzDNS)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDNS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    _ = try? DNSHeader.parse(input)
    _ = DNSReplies.questionEnd(input)
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 8)
    defer { copy.deallocate() }
    copy.copyMemory(from: input)
    if let n = DNSReplies.failure(copy, length: size, rcode: 2) { precondition(n <= size) }

    var udp = [UInt8](repeating: 0, count: 8) + Array(input)
    udp[0] = 0x9C; udp[1] = 0x40; udp[2] = 0; udp[3] = 53
    let len = min(udp.count, 65_535 - 20)
    udp[4] = UInt8(len >> 8); udp[5] = UInt8(len & 0xFF)
    for withUpstreams in [false, true] {
        let (host, g) = reusedGateway()
        if !withUpstreams { g.setDNSUpstreams([]) }
        deliver(g, guestFrame(dst: dnsIP, proto: .udp, udp), now: startTime)
        host.pending = [HostReceiveScript(kind: 0, identifier: nil, sequence: 0, offender: dnsIP, bytes: Array(input))]
        g.hostReadable(FlowTag(kind: .udp, index: 0), now: startTime)
        g.poll(now: startTime + .seconds(5))
        drainAndCheck(g)
    }
    return 0
}
