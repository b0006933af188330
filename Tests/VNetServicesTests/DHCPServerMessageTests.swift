// DHCPServer's replies: OFFER/ACK contents, NAK cases, other servers, INFORM, and what it ignores.

import Testing
import VNetBuffers
import VNetServices
import VNetWire

@Suite("DHCPServer messages")
struct DHCPServerMessageTests {
    @Test("OFFER carries the address, server identifier and every configured option")
    func offerContents() throws {
        var s = DHCPServer(config: config(lease: .seconds(86_400), domain: "example.test", search: ["a.example", "b.example"],
                                          hostName: "vm1", mtu: 1400))
        let a = s.answer(message(.discover, mac(1), xid: 0xCAFE_F00D), at: t0)
        let r = try #require(a.reply)
        #expect(r.type == .offer && r.yourAddress == ip(15) && !r.broadcast)
        #expect(r.length >= 300)
        let m = try #require(a.parsed)
        #expect(m.op == 2 && m.transactionID == 0xCAFE_F00D && m.clientMAC == mac(1) && m.yourAddress == ip(15))
        #expect(m.messageType == .offer && m.serverIdentifier == serverIP)
        let o = a.options
        #expect(o[1] == [255, 255, 255, 0])
        #expect(o[3] == bytes(serverIP))
        #expect(o[6] == bytes(ip(3)))
        #expect(o[28] == bytes(ip(255)))
        #expect(o[26] == [0x05, 0x78])
        #expect(o[51] == be32(86_400))
        #expect(o[58] == be32(43_200))
        #expect(o[59] == be32(75_600))
        #expect(o[12] == Array("vm1".utf8))
        #expect(o[15] == Array("example.test".utf8))
        #expect(o[119] == [1, 97, 7] + Array("example".utf8) + [0, 1, 98, 7] + Array("example".utf8) + [0])
    }

    @Test("without hostname, domain or search configured, those options are absent")
    func optionalOptionsAbsent() {
        var s = DHCPServer(config: config())
        let o = s.answer(message(.discover, mac(1)), at: t0).options
        #expect(o[12] == nil && o[15] == nil && o[119] == nil)
        #expect(o[53] == [DHCPMessageType.offer.rawValue])
    }

    @Test("REQUEST for the offered address is ACKed and binds the lease for leaseTime")
    func requestAck() throws {
        var s = DHCPServer(config: config(lease: .seconds(600)))
        _ = s.answer(message(.discover, mac(1)), at: t0)
        let a = s.answer(message(.request, mac(1), requested: ip(15), serverID: serverIP), at: t0)
        #expect(a.reply?.type == .ack && a.reply?.yourAddress == ip(15))
        #expect(a.parsed?.messageType == .ack)
        #expect(s.lease(for: mac(1), now: t0 + .seconds(599)) == ip(15))
        #expect(s.lease(for: mac(1), now: t0 + .seconds(600)) == nil)
    }

    @Test("a renewing REQUEST (ciaddr set, no requested-address option) is ACKed")
    func renewal() {
        var s = DHCPServer(config: config())
        #expect(s.lease(mac(1), at: t0) == ip(15))
        let a = s.answer(message(.request, mac(1), ciaddr: ip(15)), at: t0 + .seconds(1800))
        #expect(a.reply?.type == .ack && a.reply?.yourAddress == ip(15))
    }

    @Test("REQUEST for an address held by another MAC is NAKed, to broadcast")
    func requestHeldElsewhere() throws {
        var s = DHCPServer(config: config())
        #expect(s.lease(mac(1), at: t0) == ip(15))
        let a = s.answer(message(.request, mac(2), requested: ip(15), serverID: serverIP), at: t0)
        let r = try #require(a.reply)
        #expect(r.type == .nak && r.yourAddress == .any && r.broadcast)
        #expect(a.options[51] == nil && a.options[3] == nil)
        #expect(s.lease(for: mac(1), now: t0) == ip(15))
    }

    @Test("REQUEST outside the pool, or with no address at all, is NAKed",
          arguments: [IPv4Address(10, 0, 2, 14), IPv4Address(10, 0, 2, 31), IPv4Address(192, 0, 2, 1), nil])
    func requestOutsidePool(requested: IPv4Address?) {
        var s = DHCPServer(config: config())
        #expect(s.answer(message(.request, mac(1), requested: requested), at: t0).reply?.type == .nak)
    }

    @Test("REQUEST naming another server's identifier is ignored and changes nothing")
    func otherServer() {
        var s = DHCPServer(config: config())
        _ = s.answer(message(.discover, mac(1)), at: t0)
        let before = s.slots
        let a = s.answer(message(.request, mac(1), requested: ip(15), serverID: IPv4Address(10, 0, 2, 99)), at: t0)
        #expect(a.ignored == .otherServer)
        #expect(s.slots == before)
        #expect(s.lease(for: mac(1), now: t0) == nil)
    }

    @Test("INFORM is ACKed with configuration but no lease time and no address")
    func inform() throws {
        var s = DHCPServer(config: config())
        let a = s.answer(message(.inform, mac(1), ciaddr: IPv4Address(10, 0, 2, 77)), at: t0)
        let r = try #require(a.reply)
        #expect(r.type == .ack && r.yourAddress == .any)
        let o = a.options
        #expect(o[51] == nil && o[58] == nil && o[59] == nil)
        #expect(o[3] == bytes(serverIP) && o[6] == bytes(ip(3)) && o[1] == [255, 255, 255, 0])
        #expect(a.parsed?.clientAddress == IPv4Address(10, 0, 2, 77))
        #expect(s.slots.allSatisfy { $0.mac == nil })
    }

    @Test("the broadcast flag is honoured and echoed")
    func broadcastFlag() throws {
        var s = DHCPServer(config: config())
        let a = s.answer(message(.discover, mac(1), broadcast: true), at: t0)
        #expect(a.reply?.broadcast == true)
        #expect(a.parsed?.flags == 0x8000)
        let b = s.answer(message(.discover, mac(2)), at: t0)
        #expect(b.reply?.broadcast == false)
    }

    @Test("replies, messages without a type, and server-only types are ignored")
    func ignored() {
        var s = DHCPServer(config: config())
        var reply = message(.discover, mac(1))
        reply.op = 2
        #expect(s.answer(reply, at: t0).ignored == .notARequest)
        #expect(s.answer(DHCPMessage(op: 1, transactionID: 1, clientMAC: mac(1), messageType: nil), at: t0).ignored == .noMessageType)
        for t in [DHCPMessageType.offer, .ack, .nak] { #expect(s.answer(message(t, mac(1)), at: t0).ignored == .notARequest) }
        #expect(s.slots.allSatisfy { $0.mac == nil })
    }

    @Test("a reply that does not fit the buffer is refused, not written past it")
    func replyTooLarge() {
        let long = (0 ..< 20).map { "label\($0).example" }
        var s = DHCPServer(config: config(domain: String(repeating: "d", count: 200), search: long, hostName: String(repeating: "h", count: 200)))
        var buffer = [UInt8](repeating: 0xEE, count: 400 + 16)
        let outcome = buffer.withUnsafeMutableBytes { b in
            s.handle(message(.discover, mac(1)), now: t0, into: UnsafeMutableRawBufferPointer(rebasing: b[0 ..< 400]))
        }
        #expect(outcome == .ignored(.replyTooLarge))
        #expect(buffer[400...].allSatisfy { $0 == 0xEE })
    }
}
