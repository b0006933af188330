// Fuzz target: IPv4 header parsing and fragment reassembly. The input is a sequence of records, each an IPv4
// packet from the guest; its header checksum (and the layer-4 checksum where the lengths allow) is fixed so
// reassembly sees it, and the source is forced into the guest network unless the selector says otherwise.
import FuzzSupport

@_cdecl("FuzzIPv4Fragments_main")
public func fuzzIPv4FragmentsMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzIPv4Fragments)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIPv4Fragments(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let (_, g) = reusedGateway()
    var now = startTime
    var records = RecordReader(UnsafeRawBufferPointer(start: data, count: size))
    while let (selector, bytes) = records.next() {
        var packet = bytes
        if selector & 1 == 0 && packet.count >= 20 {
            packet[0] = 0x40 | (packet[0] & 0x0F)
            packet[12] = 10; packet[13] = 0; packet[14] = 2; packet[15] = 15
        }
        _ = packet.withUnsafeBytes { try? IPv4Header.parse($0) }
        var f = ethernetFrame(type: .ipv4, packet)
        fixupFrame(&f)
        deliver(g, f, now: now)
        if selector & 0x80 != 0 {
            now = now + .seconds(UInt64(selector & 0x3F))
            g.poll(now: now)
        }
        drainAndCheck(g)
    }
    return 0
}
