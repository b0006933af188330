// Fuzz target: TCP from the guest, with the host side scripted by the same input. Records: selector 0-3 a
// segment from the guest (checksum fixed) to a few destinations; 4 the connect completes (writable); 5 the
// remote sends the bytes (readable); 6 the remote closes; 7 time passes and timers run.
import FuzzSupport

@_cdecl("FuzzTCP_main")
public func fuzzTCPMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzTCP)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTCP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let (host, g) = reusedGateway()
    var now = startTime
    var records = RecordReader(UnsafeRawBufferPointer(start: data, count: size))
    while let (selector, bytes) = records.next() {
        switch selector % 8 {
        case 0, 1, 2, 3:
            _ = bytes.withUnsafeBytes { try? TCPHeader.parse($0) }
            let dst = [externalIP, gatewayIP, dnsIP, IPv4Address(10, 0, 2, 100)][Int(selector % 4)]
            deliver(g, guestFrame(dst: dst, proto: .tcp, bytes), now: now)
        case 4:
            host.connectError = bytes.first.map { $0 & 1 == 0 ? 0 : 111 } ?? 0
            for i in 0 ..< 4 { g.hostWritable(FlowTag(kind: .tcp, index: i), now: now) }
        case 5:
            host.peerBytes += bytes
            for i in 0 ..< 4 { g.hostReadable(FlowTag(kind: .tcp, index: i), now: now) }
        case 6:
            host.peerClosed = true
            host.sendSpace = Int(bytes.first ?? 0) * 64
            for i in 0 ..< 4 { g.hostReadable(FlowTag(kind: .tcp, index: i), now: now) }
        default:
            now = now + .milliseconds(UInt64(bytes.first ?? 1) * 100)
            g.poll(now: now)
        }
        g.resumeFlowsBlockedOnQueue(now: now)
        drainAndCheck(g)
    }
    return 0
}
