// Fuzz target: Ethernet and ARP parsing, and the gateway's ARP responder. The input is one frame; it is fed
// as it is, then with its Ethernet header forced to broadcast ARP so the ARP code sees every input.
import FuzzSupport

@_cdecl("FuzzEthernetARP_main")
public func fuzzEthernetARPMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzEthernetARP)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEthernetARP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    if let eth = try? EthernetHeader.parse(input) {
        precondition(eth.headerLength <= input.count)
        if let arp = try? ARPPacket.parse(input.slice(eth.headerLength ..< input.count)) {
            var out = [UInt8](repeating: 0, count: ARPPacket.length)
            out.withUnsafeMutableBytes { _ = arp.emit(into: $0) }
            let again = out.withUnsafeBytes { try? ARPPacket.parse($0) }
            precondition(again == arp, "ARP parse -> emit -> parse changed the packet")
        }
    }
    let (_, g) = reusedGateway()
    deliver(g, Array(input), now: startTime)
    if size >= 14 {
        var f = Array(input)
        for i in 0 ..< 6 { f[i] = 0xFF }
        f[12] = 0x08; f[13] = 0x06
        deliver(g, f, now: startTime)
    }
    drainAndCheck(g)
    return 0
}
