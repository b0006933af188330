// Offloads finished in software, for a link that cannot take them.
//
// Theory of Operation
// -------------------
// A port with offload (a TAP opened with IFF_VNET_HDR, later vhost-user with TSO) hands vnet frames that are
// not yet wire frames: a TCP "super-segment" of up to 64 KiB that the receiver is to cut at `segmentSize`
// payload bytes, and layer-4 checksums left partial (NEEDS_CSUM: the field holds the pseudo-header sum and
// the sum is to be finished over `checksumStart...`). A port without offload (a QEMU stream or datagram, a
// plain TAP) must be given wire frames. What a NIC's TSO does is done here (virtio 1.x §5.1.6.2 and the
// Linux GSO rules):
//   - every segment carries a copy of the Ethernet (optionally 802.1Q), IP and TCP headers;
//   - IPv4: total length and header checksum per segment, identification incremented per segment;
//     IPv6: payload length per segment (no extension headers: such a super-segment is refused);
//   - TCP: sequence number advanced by the bytes before it; FIN and PSH only on the last segment, CWR only on
//     the first; checksum computed in full over the pseudo-header, header and payload.
// Every length is checked against the frame before it is read; a frame that does not add up is refused (the
// caller counts the drop). Nothing allocates: the caller passes the scratch buffer segments are built in.

public enum SoftwareOffload {
    /// Where the layers of an offloaded TCP frame start, read with every bound checked.
    struct Layout {
        var ipStart: Int
        var ipv4: Bool
        var tcpStart: Int
        var payloadStart: Int
        /// End of the IP datagram (bytes past it, such as padding, are not part of any segment).
        var end: Int
    }

    /// Where the IP header starts (after an optional 802.1Q tag) and the EtherType naming it.
    static func network(_ frame: UnsafeRawBufferPointer) -> (ipStart: Int, etherType: UInt16)? {
        guard frame.count >= 14 else { return nil }
        guard frame.u16(12) == 0x8100 else { return (14, frame.u16(12)) }
        return frame.count >= 18 ? (18, frame.u16(16)) : nil
    }

    static func layout(_ frame: UnsafeRawBufferPointer) -> Layout? {
        guard let (ipStart, etherType) = network(frame) else { return nil }
        let ipv4: Bool
        let tcpStart: Int
        let end: Int
        switch etherType {
        case 0x0800:
            guard frame.count >= ipStart + 20, frame[ipStart] >> 4 == 4 else { return nil }
            let ihl = Int(frame[ipStart] & 0x0F) * 4
            let total = Int(frame.u16(ipStart + 2))
            guard ihl >= 20, total >= ihl, ipStart + total <= frame.count, frame[ipStart + 9] == 6 else { return nil }
            ipv4 = true
            tcpStart = ipStart + ihl
            end = ipStart + total
        case 0x86DD:
            guard frame.count >= ipStart + 40, frame[ipStart] >> 4 == 6, frame[ipStart + 6] == 6 else { return nil }
            let payload = Int(frame.u16(ipStart + 4))
            guard ipStart + 40 + payload <= frame.count else { return nil }
            ipv4 = false
            tcpStart = ipStart + 40
            end = ipStart + 40 + payload
        default:
            return nil
        }
        guard end >= tcpStart + 20 else { return nil }
        let tcpHeader = Int(frame[tcpStart + 12] >> 4) * 4
        guard tcpHeader >= 20, tcpStart + tcpHeader <= end else { return nil }
        return Layout(ipStart: ipStart, ipv4: ipv4, tcpStart: tcpStart, payloadStart: tcpStart + tcpHeader, end: end)
    }

    /// Finishes a partial layer-4 checksum in place (`header.flags` has NEEDS_CSUM): sums the bytes from
    /// `checksumStart` to the end of the IP datagram (Ethernet padding excluded), starting from what the field
    /// holds (the pseudo-header sum). False if the offsets fall outside the datagram.
    public static func completeChecksum(_ frame: UnsafeMutableRawBufferPointer, header: VirtioNetHeader) -> Bool {
        let start = Int(header.checksumStart)
        let field = start + Int(header.checksumOffset)
        let end = datagramEnd(UnsafeRawBufferPointer(frame)) ?? frame.count
        guard start >= 14, start < end, field + 2 <= end else { return false }
        let seed = UInt64(UnsafeRawBufferPointer(frame).u16(field))
        frame.put16(field, 0)
        var value = InternetChecksum.finish(InternetChecksum.add(UnsafeRawBufferPointer(frame.slice(start ..< end)), to: seed))
        // UDP (its checksum sits 6 bytes in) sends a computed zero as all ones (RFC 768).
        if value == 0 && header.checksumOffset == 6 { value = 0xFFFF }
        frame.put16(field, value)
        return true
    }

    /// The end of the IPv4 or IPv6 datagram an Ethernet frame carries, when its length field fits the frame.
    static func datagramEnd(_ frame: UnsafeRawBufferPointer) -> Int? {
        guard let (ipStart, etherType) = network(frame) else { return nil }
        let end: Int
        switch etherType {
        case 0x0800 where frame.count >= ipStart + 20: end = ipStart + Int(frame.u16(ipStart + 2))
        case 0x86DD where frame.count >= ipStart + 40: end = ipStart + 40 + Int(frame.u16(ipStart + 4))
        default: return nil
        }
        return end <= frame.count ? end : nil
    }

    /// Cuts a TCP super-segment into wire frames of at most `segmentSize` payload bytes each, built one after
    /// another in `scratch` and passed to `emit`. Returns the number of segments, or nil (nothing emitted)
    /// when the frame is not a well-formed TCP/IP super-segment or a segment would not fit in `scratch`.
    @discardableResult
    public static func segment(_ frame: UnsafeRawBufferPointer, segmentSize: Int, scratch: UnsafeMutableRawBufferPointer,
                               _ emit: (UnsafeRawBufferPointer) -> Void) -> Int? {
        guard segmentSize > 0, let l = layout(frame) else { return nil }
        let headers = l.payloadStart
        let payload = l.end - l.payloadStart
        guard headers + min(segmentSize, max(payload, 1)) <= scratch.count else { return nil }
        let sequence = UInt32(frame.u16(l.tcpStart + 4)) << 16 | UInt32(frame.u16(l.tcpStart + 6))
        let flags = frame[l.tcpStart + 13]
        let identification = l.ipv4 ? frame.u16(l.ipStart + 4) : 0
        let source = UnsafeRawBufferPointer(rebasing: frame[(l.ipv4 ? l.ipStart + 12 : l.ipStart + 8) ..< (l.ipv4 ? l.ipStart + 20 : l.ipStart + 40)])
        let count = max(1, (payload + segmentSize - 1) / segmentSize)
        var offset = 0
        for i in 0 ..< count {
            let n = min(segmentSize, payload - offset)
            let length = headers + n
            scratch.copy(UnsafeRawBufferPointer(rebasing: frame[0 ..< headers]), to: 0)
            if n > 0 { scratch.copy(UnsafeRawBufferPointer(rebasing: frame[(l.payloadStart + offset) ..< (l.payloadStart + offset + n)]), to: headers) }
            let l4Length = length - l.tcpStart
            if l.ipv4 {
                scratch.put16(l.ipStart + 2, UInt16(length - l.ipStart))
                scratch.put16(l.ipStart + 4, identification &+ UInt16(truncatingIfNeeded: i))
                scratch.put16(l.ipStart + 10, 0)
                scratch.put16(l.ipStart + 10, InternetChecksum.of(UnsafeRawBufferPointer(scratch.slice(l.ipStart ..< l.tcpStart))))
            } else {
                scratch.put16(l.ipStart + 4, UInt16(l4Length))
            }
            let seq = sequence &+ UInt32(offset)
            scratch.put16(l.tcpStart + 4, UInt16(truncatingIfNeeded: seq >> 16))
            scratch.put16(l.tcpStart + 6, UInt16(truncatingIfNeeded: seq))
            var f = flags
            if i != count - 1 { f &= ~(0x01 | 0x08) }   // FIN, PSH: last segment only
            if i != 0 { f &= ~0x80 }                     // CWR: first segment only
            scratch[l.tcpStart + 13] = f
            // Pseudo-header: source and destination (adjacent in both families), protocol 6, TCP length.
            var sum = InternetChecksum.add(source)
            sum &+= 6
            sum &+= UInt64(l4Length)
            scratch.put16(l.tcpStart + 16, 0)
            sum = InternetChecksum.add(UnsafeRawBufferPointer(scratch.slice(l.tcpStart ..< length)), to: sum)
            scratch.put16(l.tcpStart + 16, InternetChecksum.finish(sum))
            emit(UnsafeRawBufferPointer(scratch.slice(0 ..< length)))
            offset += n
        }
        return count
    }
}
