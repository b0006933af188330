// Fuzz target: the TFTP server (request parsing, option negotiation, the block/ACK state machine, timers) on
// its own and through the gateway. The input is records (see RecordReader): selector 0-3 sends the bytes as a
// UDP datagram from guest port 1000+selector to 10.0.2.2:69 through the gateway; 4 advances time by
// (first byte) x 100 ms and polls; 5 hands the bytes straight to a TFTPServer at MTU 576 from one of two ports.
// Checked: replies fit the packet and the MTU's block, transfers never exceed the cap, and every open file
// belongs to a live transfer.
import FuzzSupport

final class FuzzFiles: TFTPFileSource {
    var open: Set<Int32> = []
    var next: Int32 = 3
    let sizes: [String: Int] = ["a": 0, "b": 512, "c": 1500, "d": 70_000]
    func open(_ path: String) -> TFTPOpenResult {
        precondition(TFTPPath.isAcceptable(path), "unchecked path reached the file source: \(path)")
        guard let size = sizes[path] else { return path.hasPrefix("x") ? .accessDenied : .notFound }
        next &+= 1
        open.insert(next)
        return .opened(handle: next, size: UInt64(size))
    }
    func read(_ handle: Int32, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        precondition(open.contains(handle), "read of a closed handle")
        for i in 0 ..< buffer.count { buffer[i] = UInt8(truncatingIfNeeded: Int(offset) &+ i) }
        return buffer.count
    }
    func close(_ handle: Int32) {
        precondition(open.remove(handle) != nil, "close of a handle that was not open")
    }
}

@_cdecl("FuzzTFTP_main")
public func fuzzTFTPMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzTFTP)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTFTP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    var records = RecordReader(UnsafeRawBufferPointer(start: data, count: size))
    let (_, g) = reusedGateway()
    let gatewayFiles = FuzzFiles()
    g.enableTFTP(files: gatewayFiles)
    let files = FuzzFiles()
    var server = TFTPServer(files: files, mtu: 576, capacity: 3)
    let out = UnsafeMutableRawBufferPointer.allocate(byteCount: TFTPServer.maximumPacket, alignment: 8)
    defer { out.deallocate() }
    var now = startTime
    let maxBlock = server.maximumBlockForMTU
    func checkPacket(_ length: Int) {
        precondition(length <= TFTPServer.maximumPacket)
        if length >= 2 && out[0] == 0 && out[1] == 3 { precondition(length <= 4 + maxBlock, "DATA over the MTU") }
    }
    while let (selector, bytes) = records.next() {
        switch selector % 6 {
        case 0, 1, 2, 3:
            var udp = [UInt8](repeating: 0, count: 8) + bytes
            let port = 1000 + UInt16(selector % 6)
            udp[0] = UInt8(port >> 8); udp[1] = UInt8(port & 0xFF); udp[3] = 69
            let len = min(udp.count, 1400)
            udp = Array(udp[..<len])
            udp[4] = UInt8(len >> 8); udp[5] = UInt8(len & 0xFF)
            deliver(g, guestFrame(dst: gatewayIP, proto: .udp, udp), now: now)
        case 4:
            now = now + .milliseconds(100 * UInt64(bytes.first ?? 1))
            g.poll(now: now)
            server.poll(now: now, into: out, send: { _, n in checkPacket(n) }, gaveUp: {})
        default:
            let peer = TFTPPeer(address: guestIP, port: bytes.count % 2 == 0 ? 2000 : 2001, mac: guestMAC)
            let r = bytes.withUnsafeBytes { server.handle($0, from: peer, now: now, into: out) }
            checkPacket(r.length)
        }
        precondition(server.activeTransfers <= 3 && files.open.count == server.activeTransfers)
        precondition(g.tftpTransferCount == gatewayFiles.open.count && g.tftpTransferCount <= g.config.tftpTransferCapacity)
        drainAndCheck(g)
    }
    return 0
}
