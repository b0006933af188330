// ICMP for IPv4 (RFC 792). Values from `tshark -r FILE -V`: every ICMPv4 checksum in the corpus is correct.

import Testing
@testable import VNetWire

@Suite struct ICMPTests {
    static var icmpFrames: [PcapFrame] { Corpus.allFrames.filter { (try? dissect($0))?.icmp != nil } }

    @Test func corpusHasFourEchoMessages() {
        #expect(Self.icmpFrames.map(\.testDescription) == [
            "\(Corpus.icmpSLL2v4)#1", "\(Corpus.icmpSLL2v4)#2", "\(Corpus.ping4)#1", "\(Corpus.ping4)#2",
        ])
    }

    @Test(arguments: [
        (Corpus.ping4, 1, ICMPv4Header.echoRequest, UInt16(0x223c)),
        (Corpus.ping4, 2, ICMPv4Header.echoReply, 0x2a3c),
        (Corpus.icmpSLL2v4, 1, ICMPv4Header.echoRequest, 0xb579),
        (Corpus.icmpSLL2v4, 2, ICMPv4Header.echoReply, 0xbd79),
    ])
    func echoFields(file: String, frame: Int, type: UInt8, checksum: UInt16) throws {
        let f = try Corpus.frame(file, frame)
        let d = try dissect(f)
        let h = try #require(d.icmp)
        #expect(h.type == type)
        #expect(h.code == 0)
        #expect(h.checksum == checksum)
        #expect(h.identifier == 1)          // tshark: Identifier (BE) 1, Sequence Number (BE) 1
        #expect(h.sequence == 1)
        #expect(h.restOfHeader == 0x0001_0001)
        #expect(!h.isError)
        #expect(d.l4?.count == 64)           // 8 header + 56 data (Linux ping's default)
        #expect(f.captured[try #require(d.l4)].withUnsafeBytes { ICMPv4Header.checksumValid($0) })
    }

    // parse -> emit: the whole message compared (body copied, header emitted over junk, checksum recomputed).
    @Test(arguments: icmpFrames)
    func roundTrip(_ f: PcapFrame) throws {
        let d = try dissect(f)
        let h = try #require(d.icmp)
        let msg = Array(f.captured[try #require(d.l4)])
        var n = 0
        let out = build(msg.count, fill: 0xEE) { b in
            b.slice(8 ..< msg.count).copyBytes(from: msg[8...])
            n = h.emit(into: b, messageLength: msg.count)
        }
        #expect(n == 8)
        #expect(out == msg)
    }

    // The reply QEMU sent for the guest's ping is the request with type 0 and a fresh checksum: building it
    // from the parsed request reproduces the captured reply byte for byte.
    @Test func echoReplyFromRequestMatchesQEMU() throws {
        let request = try Corpus.frame(Corpus.ping4, 1), reply = try Corpus.frame(Corpus.ping4, 2)
        let dq = try dissect(request), dr = try dissect(reply)
        let req = try #require(dq.icmp)
        let body = Array(request.captured[try #require(dq.l4)])
        let out = build(body.count) { b in
            b.slice(8 ..< body.count).copyBytes(from: body[8...])
            ICMPv4Header(type: ICMPv4Header.echoReply, code: 0, restOfHeader: req.restOfHeader).emit(into: b, messageLength: body.count)
        }
        #expect(out == Array(reply.captured[try #require(dr.l4)]))
        #expect(u16(out, 2) == 0x2a3c)
    }

    @Test func corruptedMessageFailsChecksum() throws {
        let f = try Corpus.frame(Corpus.ping4, 1)
        let msg = Array(f.captured[try #require(try dissect(f).l4)])
        for i in stride(from: 0, to: msg.count, by: 7) {
            var m = msg
            m[i] ^= 0x01
            #expect(!m.withUnsafeBytes { ICMPv4Header.checksumValid($0) }, "byte \(i)")
        }
    }

    @Test(arguments: icmpFrames)
    func everyPrefix(_ f: PcapFrame) throws {
        let d = try dissect(f)
        let full = try #require(d.icmp)
        let msg = f.captured[try #require(d.l4)]
        for n in 0 ... msg.count {
            let r = parseExact(msg.prefix(n), ICMPv4Header.parse)
            if n < 8 { #expect(r.isMalformed, "n=\(n)") } else { #expect(r.value == full, "n=\(n)") }
        }
    }

    @Test(arguments: 0 ... 255)
    func errorTypes(type: Int) {
        let h = ICMPv4Header(type: UInt8(type), code: 0)
        // RFC 792 error messages: destination unreachable 3, source quench 4, redirect 5, time exceeded 11,
        // parameter problem 12.
        #expect(h.isError == [3, 4, 5, 11, 12].contains(type))
    }

    @Test func identifierAndSequenceSplitRestOfHeader() {
        let h = ICMPv4Header(type: 8, code: 0, restOfHeader: 0x6ce7_0102)
        #expect(h.identifier == 0x6ce7)
        #expect(h.sequence == 0x0102)
        let out = build(8) { h.emit(into: $0, messageLength: 8) }
        #expect(Array(out[4...]) == [0x6c, 0xe7, 0x01, 0x02])
        #expect(out.withUnsafeBytes { ICMPv4Header.checksumValid($0) })
    }
}
