// Frames written straight to a port's device (a TAP) while its queue is empty, without the copy into the queue;
// a device that is not ready, a frame that needs its tag changed, or a queue with frames waiting keeps order by
// queueing.

import Testing
import VNetBuffers
import VNetSwitch
import VNetWire

@Suite("L2 switch direct writes")
struct DirectWriteTests {
    @Test("an empty queue's port takes the frame at once; a refusal, a waiting queue and a tag change queue it")
    func directThenQueued() {
        let r = Rig([.access(1), .access(1), .trunk(allowed: VLANSet([1]), native: nil)])
        let a = mac(0xA), b = mac(0xB), c = mac(0xC)
        var written: [[UInt8]] = []
        var ready = true
        r.sw.setDirectWriter(port: 1) { header, f in
            guard ready else { return false }
            #expect(header.isEmpty, "a queue without a header slot gets no header")
            written.append(Array(f))
            return true
        }
        r.send(1, frame(from: b, to: a))   // learn b on port 1 (flooded to 0 and 2)
        _ = r.out(0)
        _ = r.out(2)
        r.send(0, frame(from: a, to: b, payload: 1))
        #expect(written == [frame(from: a, to: b, payload: 1)] && r.out(1).isEmpty)
        #expect(r.sw.directWrites == 1 && r.sw.ports[1]!.counters.txPackets == 1)

        ready = false
        r.send(0, frame(from: a, to: b, payload: 2))
        ready = true
        r.send(0, frame(from: a, to: b, payload: 3))
        #expect(written.count == 1, "a frame waits in the queue: the next one queues behind it")
        #expect(r.out(1) == [frame(from: a, to: b, payload: 2), frame(from: a, to: b, payload: 3)])

        // Port 2 is a trunk: the frame gains a tag there, so it is copied into the queue, never written as is.
        r.sw.setDirectWriter(port: 2) { _, _ in Issue.record("a frame that needs a tag was written as is"); return true }
        r.send(2, frame(from: c, to: a, tag: 1))
        _ = r.out(0)
        r.send(0, frame(from: a, to: c))
        #expect(r.out(2).count == 1)
    }
}
