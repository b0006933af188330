// Guest UDP datagrams of one flow, read in one wake-up of the guest port, sent with one UDP GSO send.
//
// Theory of Operation
// -------------------
// A guest streaming UDP sends datagrams of one size, back to back. Sent one `send` each, every datagram
// costs vnet a syscall and the receiving host socket a wake-up; the profile of `iperf3 -u` showed the
// wake-ups, not vnet's code, as the cost, and the receiver (not vnet) dropping datagrams for want of CPU.
// When the runtime sets `gathersGuestDatagrams` (it calls `flushGuestSends` after every read of the guest
// port), a datagram of a non-DNS flow is copied into `GuestDatagramBatch` instead of being sent: consecutive
// datagrams of the same flow and size join it (one shorter datagram may end it), and the batch goes out as
// one send with UDP_SEGMENT, which the kernel splits back into the same datagrams (on loopback, at the
// receiving socket, so it is woken once per batch). Anything else flushes first: another flow's datagram,
// a different size, a TTL change, a full batch (`capacity` datagrams or `byteLimit` bytes), the end of the
// read. Order within a flow is kept; a kernel that refuses the GSO send gets the datagrams one by one.

import VNetBuffers
import VNetWire

struct GuestDatagramBatch {
    /// UDP_MAX_SEGMENTS is 64 on older kernels.
    static let capacity = 64
    /// Under the 64 KiB an IP datagram (and so a GSO send) can carry, headers included.
    static let byteLimit = 65_000
    var flow = -1
    var handle: Int32 = -1
    var segmentSize = 0
    var count = 0
    var bytes = 0
    /// Set once a shorter datagram ended the batch: nothing more may join.
    var closed = false
    let storage: UnsafeMutableRawBufferPointer

    init() {
        storage = .allocate(byteCount: GuestDatagramBatch.byteLimit, alignment: 16)
    }

    mutating func reset() {
        flow = -1
        handle = -1
        count = 0
        bytes = 0
        closed = false
    }
}

extension Gateway {
    /// Sends the gathered datagrams, if any (called from `flushGuestSends`).
    func flushGuestDatagrams() {
        guard udpEngine.sendBatch.count > 0 else { return udpEngine.sendBatch.reset() }
        defer { udpEngine.sendBatch.reset() }
        let b = udpEngine.sendBatch
        guard let flow = udpEngine.flows[b.flow], flow.handle == b.handle else { return }
        if b.count > 1 { counters.count(.udpBatchedSends) }
        let sent = host.sendUDPSegments(b.handle, UnsafeRawBufferPointer(rebasing: b.storage[0 ..< b.bytes]), segmentSize: b.segmentSize)
        for _ in sent ..< b.count { drop(.hostSendFailed) }
    }

    /// Sends `payload` on flow `i`, or adds it to the batch when the runtime gathers datagrams.
    func sendGuestDatagram(_ i: Int, handle: Int32, _ payload: UnsafeRawBufferPointer) {
        guard gathersGuestDatagrams, !payload.isEmpty, payload.count <= GuestDatagramBatch.byteLimit else {
            if !host.sendUDP(handle, payload) { drop(.hostSendFailed) }
            return
        }
        var b = udpEngine.sendBatch
        let joins = b.flow == i && b.handle == handle && !b.closed && payload.count <= b.segmentSize
            && b.count < GuestDatagramBatch.capacity && b.bytes + payload.count <= GuestDatagramBatch.byteLimit
        if !joins {
            flushGuestDatagrams()
            b = udpEngine.sendBatch
            b.flow = i
            b.handle = handle
            b.segmentSize = payload.count
        }
        UnsafeMutableRawBufferPointer(rebasing: b.storage[b.bytes ..< b.bytes + payload.count]).copyMemory(from: payload)
        b.bytes += payload.count
        b.count += 1
        if payload.count < b.segmentSize { b.closed = true }
        udpEngine.sendBatch = b
    }

    /// A datagram batch of flow `i` goes out before anything that changes how its socket sends.
    func flushGuestDatagrams(of i: Int) {
        if udpEngine.sendBatch.flow == i { flushGuestDatagrams() }
    }
}
