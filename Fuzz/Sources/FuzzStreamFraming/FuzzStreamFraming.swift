// Fuzz target: QEMU stream framing. The input is the byte stream a QEMU would send, cut into reads whose sizes
// come from the input's own first bytes; complete frames go to a gateway, a desync resets the stream.
import FuzzSupport

@_cdecl("FuzzStreamFraming_main")
public func fuzzStreamFramingMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzStreamFraming)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStreamFraming(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let deframer = reusedDeframer()
    let (_, g) = reusedGateway()
    var offset = 0
    var i = 0
    while offset < size {
        let space = deframer.readSpace
        let want = Int(input[i % size]) * 7 + 1
        i += 1
        let n = min(want, size - offset, space.count)
        space.copyMemory(from: UnsafeRawBufferPointer(rebasing: input[offset ..< offset + n]))
        deframer.didRead(n)
        offset += n
        drain: while true {
            switch deframer.next() {
            case .frame(let f):
                precondition(f.count >= FrameLimits.minimumFrame && f.count <= deframer.maximumFrame)
                g.handleGuestFrame(f, now: startTime)
            case .needMore:
                break drain
            case .desync:
                deframer.reset()
                break drain
            }
        }
        drainAndCheck(g)
    }
    return 0
}
