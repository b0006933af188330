// vfkit's unixgram framing (what gvproxy's `--listen-vfkit` serves).
//
// vfkit connects a unixgram socket (bound to a path of its own) to the network's socket and, right after
// connecting, sends the 4 bytes "VFKT" so that the other end learns the address to answer to (a datagram
// socket has no accept). Every datagram after that carries one Ethernet frame, without a header or FCS.
// krunkit sends the magic only with `vfkitMagic=on`, so a peer that starts with a frame is accepted too.
// The magic can never be mistaken for a frame: a frame has at least 14 bytes.

public enum VfkitFraming {
    /// "VFKT".
    public static let magic: [UInt8] = [0x56, 0x46, 0x4B, 0x54]

    @inline(__always)
    public static func isMagic(_ datagram: UnsafeRawBufferPointer) -> Bool {
        datagram.count == 4 && datagram[0] == 0x56 && datagram[1] == 0x46 && datagram[2] == 0x4B && datagram[3] == 0x54
    }
}
