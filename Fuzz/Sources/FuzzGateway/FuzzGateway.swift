// Fuzz target: the whole gateway, fed a sequence of events with host sockets stubbed. Records (selector % 8):
// 0 a raw guest frame; 1 a guest frame with its IPv4/L4 checksums fixed; 2 the same forced to come from the
// guest's MAC and address; 3 a host datagram or ICMP event on a UDP/ICMP flow; 4 remote TCP bytes; 5 TCP connect
// completion; 6 time passes (timers, expiry, reassembly timeouts); 7 a frame through the stream deframer.
import FuzzSupport

@_cdecl("FuzzGateway_main")
public func fuzzGatewayMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzGateway)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGateway(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let (host, g) = reusedGateway()
    let deframer = reusedDeframer()
    var now = startTime
    var records = RecordReader(UnsafeRawBufferPointer(start: data, count: size))
    while let (selector, bytes) = records.next() {
        let pick = Int(selector >> 3)
        switch selector % 8 {
        case 0:
            deliver(g, bytes, now: now)
        case 1:
            var f = bytes
            fixupFrame(&f)
            deliver(g, f, now: now)
        case 2:
            var f = bytes
            if f.count >= 34 {
                f.withUnsafeMutableBytes { b in
                    gatewayMAC.write(to: b, at: 0)
                    guestMAC.write(to: b, at: 6)
                    b[12] = 0x08; b[13] = 0x00
                    b[14] = 0x45
                    guestIP.write(to: b, at: 26)
                }
            }
            fixupFrame(&f)
            deliver(g, f, now: now)
        case 3:
            host.pending = [HostReceiveScript(kind: UInt8(pick % 4), identifier: pick & 4 == 0 ? nil : UInt16(pick), sequence: UInt16(bytes.count),
                                              offender: pick & 8 == 0 ? externalIP : .loopback, bytes: bytes)]
            g.hostReadable(FlowTag(kind: pick & 16 == 0 ? .udp : .icmp, index: pick % 4), now: now)
            host.pending = []
        case 4:
            host.peerBytes += bytes
            g.hostReadable(FlowTag(kind: .tcp, index: pick % 4), now: now)
        case 5:
            host.connectError = pick & 1 == 0 ? 0 : 111
            host.sendSpace = pick * 512
            g.hostWritable(FlowTag(kind: .tcp, index: pick % 4), now: now)
        case 6:
            now = now + .milliseconds(UInt64(pick) * 250 + UInt64(bytes.first ?? 0) * 1000)
            g.poll(now: now)
        default:
            let space = deframer.readSpace
            let n = min(bytes.count, space.count)
            bytes.withUnsafeBytes { space.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            deframer.didRead(n)
            drain: while true {
                switch deframer.next() {
                case .frame(let f): g.handleGuestFrame(f, now: now)
                case .needMore: break drain
                case .desync: deframer.reset(); break drain
                }
            }
            g.flushPendingAcks()
        }
        g.resumeFlowsBlockedOnQueue(now: now)
        drainAndCheck(g)
    }
    return 0
}
