// The rtnetlink encoder and decoder: exact request bytes, decoding of kernel-shaped replies, and refusal of
// truncated or hostile messages.

import Testing
import VNetKernel
import VNetWire

func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
func le32(_ v: UInt32) -> [UInt8] { (0 ..< 4).map { UInt8(truncatingIfNeeded: v >> UInt32(8 * $0)) } }
func attr(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
    var a = le16(UInt16(4 + value.count)) + le16(type) + value
    while a.count % 4 != 0 { a.append(0) }
    return a
}
func message(type: UInt16, flags: UInt16 = 0, seq: UInt32, payload: [UInt8]) -> [UInt8] {
    le32(UInt32(16 + payload.count)) + le16(type) + le16(flags) + le32(seq) + le32(0) + payload
}
func ifinfo(index: Int32, flags: UInt32 = 0) -> [UInt8] { [0, 0] + le16(1) + le32(UInt32(bitPattern: index)) + le32(flags) + le32(0) }

/// A bridge as the kernel describes it in RTM_NEWLINK.
func bridgeLink(index: Int32, name: String, stp: UInt32, id: [UInt8]) -> [UInt8] {
    let data = attr(LinkAttribute.bridgeSTPState, le32(stp)) + attr(LinkAttribute.bridgeID, id)
    let info = attr(LinkAttribute.infoKind, Array("bridge".utf8) + [0]) + attr(LinkAttribute.infoData | Netlink.nestedFlag, data)
    return ifinfo(index: index, flags: 1) + attr(LinkAttribute.ifname, Array(name.utf8) + [0]) + attr(LinkAttribute.mtu, le32(1500))
        + attr(LinkAttribute.linkInfo | Netlink.nestedFlag, info)
}

@Suite("rtnetlink encoding")
struct NetlinkEncodingTests {
    @Test("creating a bridge: header, ifinfomsg, IFLA_IFNAME and a nested IFLA_LINKINFO/IFLA_INFO_KIND")
    func createBridgeBytes() {
        let b = LinkRequests.create(name: "br0", kind: "bridge", sequence: 7)
        let expectedPayload = [UInt8](repeating: 0, count: 16)
            + attr(3, Array("br0".utf8) + [0])
            + le16(4 + 12) + le16(18 | 0x8000) + attr(1, Array("bridge".utf8))
        let expected = le32(UInt32(16 + expectedPayload.count)) + le16(16) + le16(0x1 | 0x4 | 0x400 | 0x200) + le32(7) + le32(0) + expectedPayload
        #expect(b == expected)
        #expect(b.count % 4 == 0)
    }

    @Test("STP on: IFLA_BR_STP_STATE = 1 inside IFLA_INFO_DATA inside IFLA_LINKINFO, with correct nest lengths")
    func stpBytes() throws {
        let b = LinkRequests.setSTP(index: 9, on: true, sequence: 1)
        let msgs = try NetlinkMessages.parse(b)
        #expect(msgs.count == 1 && msgs[0].type == Netlink.newLink && msgs[0].sequence == 1)
        let p = msgs[0].payload
        #expect(Array(p.prefix(16)) == ifinfo(index: 9).enumerated().map { $0.offset == 2 ? 0 : $0.element })
        let attrs = try NetlinkAttributes.parse(p.dropFirst(16))
        let info = try #require(NetlinkAttributes.first(LinkAttribute.linkInfo, in: attrs))
        #expect(info.isNested)
        let inner = try info.nested()
        #expect(NetlinkAttributes.first(LinkAttribute.infoKind, in: inner)?.string == "bridge")
        let data = try #require(NetlinkAttributes.first(LinkAttribute.infoData, in: inner)).nested()
        #expect(NetlinkAttributes.first(LinkAttribute.bridgeSTPState, in: data)?.u32 == 1)
    }

    @Test("set master and up/down carry the index, IFLA_MASTER and the IFF_UP change mask")
    func masterAndUp() throws {
        let m = try NetlinkMessages.parse(LinkRequests.setMaster(index: 5, master: 3, sequence: 2))[0]
        #expect(Array(m.payload[m.payload.startIndex + 4 ..< m.payload.startIndex + 8]) == le32(5))
        #expect(NetlinkAttributes.first(LinkAttribute.master, in: try NetlinkAttributes.parse(m.payload.dropFirst(16)))?.u32 == 3)
        let up = try NetlinkMessages.parse(LinkRequests.setUp(index: 5, up: true, sequence: 3))[0]
        #expect(Array(up.payload.dropFirst(8).prefix(8)) == le32(1) + le32(1))
        let down = try NetlinkMessages.parse(LinkRequests.setUp(index: 5, up: false, sequence: 4))[0]
        #expect(Array(down.payload.dropFirst(8).prefix(8)) == le32(0) + le32(1))
    }

    @Test("adding 10.0.3.1/24: ifaddrmsg, IFA_LOCAL, IFA_ADDRESS in network order, broadcast 10.0.3.255")
    func addressBytes() throws {
        let m = try NetlinkMessages.parse(LinkRequests.address(add: true, index: 4, address: IPv4Address(10, 0, 3, 1), prefixLength: 24, sequence: 5))[0]
        #expect(m.type == Netlink.newAddress)
        #expect(Array(m.payload.prefix(8)) == [2, 24, 0, 0] + le32(4))
        let attrs = try NetlinkAttributes.parse(m.payload.dropFirst(8))
        #expect(NetlinkAttributes.first(AddressAttribute.local, in: attrs).map { Array($0.value) } == [10, 0, 3, 1])
        #expect(NetlinkAttributes.first(AddressAttribute.address, in: attrs).map { Array($0.value) } == [10, 0, 3, 1])
        #expect(NetlinkAttributes.first(AddressAttribute.broadcast, in: attrs).map { Array($0.value) } == [10, 0, 3, 255])
    }
}

@Suite("rtnetlink decoding")
struct NetlinkDecodingTests {
    @Test("a bridge link decodes name, index, MTU, kind, STP state and bridge id")
    func bridgeDecodes() throws {
        let id: [UInt8] = [0x80, 0x00, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
        let buf = message(type: Netlink.newLink, seq: 3, payload: bridgeLink(index: 4, name: "br0", stp: 1, id: id))
        let msgs = try NetlinkMessages.parse(buf)
        let link = try LinkInfo.parse(msgs[0].payload)
        #expect(link.name == "br0" && link.index == 4 && link.mtu == 1500 && link.isBridge && link.isUp)
        #expect(link.stpState == 1 && link.bridgeIDText == "8000.525400123456")
    }

    @Test("several messages in one datagram, then NLMSG_DONE")
    func multipleMessages() throws {
        let a = message(type: Netlink.newLink, flags: Netlink.multi, seq: 9, payload: ifinfo(index: 1) + attr(3, Array("lo".utf8) + [0]))
        let b = message(type: Netlink.newLink, flags: Netlink.multi, seq: 9,
                        payload: ifinfo(index: 2) + attr(3, Array("veth0".utf8) + [0]) + attr(LinkAttribute.master, le32(4)))
        let done = message(type: Netlink.done, seq: 9, payload: le32(0))
        let msgs = try NetlinkMessages.parse(a + b + done)
        #expect(msgs.map(\.type) == [Netlink.newLink, Netlink.newLink, Netlink.done])
        let veth = try LinkInfo.parse(msgs[1].payload)
        #expect(veth.name == "veth0" && veth.master == 4 && veth.kind == nil)
    }

    @Test("an error ack with extended-ack text decodes errno and the kernel's message")
    func extendedAck() throws {
        let original = le32(32) + le16(16) + le16(5) + le32(11) + le32(0)
        let payload = le32(UInt32(bitPattern: -17)) + original + attr(Netlink.extAckMessage, Array("File exists".utf8) + [0])
        let m = try NetlinkMessages.parse(message(type: Netlink.error, flags: Netlink.capped | Netlink.ackTLVs, seq: 11, payload: payload))[0]
        let ack = try NetlinkAck.parse(m)
        #expect(ack.errno == 17 && ack.message == "File exists")
        let plain = try NetlinkAck.parse(try NetlinkMessages.parse(message(type: Netlink.error, seq: 1, payload: le32(0) + original))[0])
        #expect(plain.errno == 0 && plain.message == nil)
    }

    @Test("an IPv4 address decodes; an IPv6 one is skipped")
    func addressDecodes() throws {
        let v4 = [2, 24, 0, 0] + le32(4) + attr(AddressAttribute.address, [10, 0, 3, 1]) + attr(AddressAttribute.local, [10, 0, 3, 1])
        #expect(try AddressInfo.parse(v4[...]) == AddressInfo(index: 4, address: IPv4Address(10, 0, 3, 1), prefixLength: 24))
        let v6 = [10, 64, 0, 0] + le32(4) + attr(AddressAttribute.address, [UInt8](repeating: 0xFE, count: 16))
        #expect(try AddressInfo.parse(v6[...]) == nil)
        let shortAddress = [2, 24, 0, 0] + le32(4) + attr(AddressAttribute.local, [10, 0, 3])
        #expect(try AddressInfo.parse(shortAddress[...]) == nil)
    }

    @Test("truncated and hostile buffers are refused, never read past the end")
    func hostile() {
        let good = message(type: Netlink.newLink, seq: 1, payload: ifinfo(index: 2) + attr(3, Array("eth0".utf8) + [0]))
        // Every truncation of a valid message fails cleanly.
        for n in 1 ..< good.count {
            let cut = Array(good.prefix(n))
            #expect(throws: NetlinkParseError.self) { _ = try NetlinkMessages.parse(cut) }
        }
        // A header claiming fewer than 16 bytes, or more than were received.
        #expect(throws: NetlinkParseError.self) { _ = try NetlinkMessages.parse(le32(8) + le16(16) + le16(0) + le32(1) + le32(0)) }
        #expect(throws: NetlinkParseError.self) { _ = try NetlinkMessages.parse(le32(4096) + le16(16) + le16(0) + le32(1) + le32(0)) }
        // Attributes: shorter than their header, longer than what is left, a trailing partial header.
        #expect(throws: NetlinkParseError.self) { _ = try NetlinkAttributes.parse((le16(2) + le16(3))[...]) }
        #expect(throws: NetlinkParseError.self) { _ = try NetlinkAttributes.parse((le16(64) + le16(3) + [1, 2, 3, 4])[...]) }
        #expect(throws: NetlinkParseError.self) { _ = try NetlinkAttributes.parse((attr(3, [0x41, 0]) + [1, 2])[...]) }
        // An ifinfomsg shorter than 16 bytes; a link with no name; a nested LINKINFO whose inside is garbage.
        #expect(throws: NetlinkParseError.self) { _ = try LinkInfo.parse([UInt8](repeating: 0, count: 15)[...]) }
        #expect(throws: NetlinkParseError.self) { _ = try LinkInfo.parse(ifinfo(index: 1)[...]) }
        let badNest = ifinfo(index: 1) + attr(3, Array("x".utf8) + [0]) + attr(LinkAttribute.linkInfo, le16(200) + le16(1))
        #expect(throws: NetlinkParseError.self) { _ = try LinkInfo.parse(badNest[...]) }
        // Error messages: no errno; extended-ack claims an original request longer than the message.
        #expect(throws: NetlinkParseError.self) { _ = try NetlinkAck.parse(NetlinkMessage(type: 2, flags: 0, sequence: 1, portID: 0, payload: [1, 2][...])) }
        let lying = le32(UInt32(bitPattern: -1)) + le32(999) + [UInt8](repeating: 0, count: 12)
        #expect(throws: NetlinkParseError.self) { _ = try NetlinkAck.parse(NetlinkMessage(type: 2, flags: Netlink.ackTLVs, sequence: 1, portID: 0, payload: lying[...])) }
        // A bridge id of the wrong size is ignored, not read.
        let oddID = message(type: Netlink.newLink, seq: 1, payload: bridgeLink(index: 3, name: "br1", stp: 0, id: [1, 2, 3]))
        #expect((try? LinkInfo.parse(try NetlinkMessages.parse(oddID)[0].payload))?.bridgeID == nil)
    }

    @Test("random bytes never crash the decoders")
    func fuzz() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0 ..< 2000 {
            let n = Int.random(in: 0 ... 96, using: &rng)
            var bytes = (0 ..< n).map { _ in UInt8.random(in: 0 ... 255, using: &rng) }
            if n >= 4 && Bool.random(using: &rng) { bytes.replaceSubrange(0 ..< 4, with: le32(UInt32(n))) }
            if let msgs = try? NetlinkMessages.parse(bytes) {
                for m in msgs {
                    _ = try? LinkInfo.parse(m.payload)
                    _ = try? AddressInfo.parse(m.payload)
                    _ = try? NetlinkAck.parse(m)
                }
            }
            _ = try? NetlinkAttributes.parse(bytes[...])
        }
    }
}

@Suite("brctl show")
struct BrctlShowTests {
    @Test("the table matches brctl's layout: header, bridge line with first port, one line per further port")
    func layout() {
        let links = [
            LinkInfo(index: 3, name: "br0", kind: "bridge", bridgeID: [0x80, 0, 0x52, 0x54, 0, 0xAA, 0xBB, 0xCC], stpState: 1),
            LinkInfo(index: 4, name: "veth1", master: 3), LinkInfo(index: 5, name: "tap0", master: 3),
            LinkInfo(index: 6, name: "br1", kind: "bridge", bridgeID: [0x80, 0, 0, 0, 0, 0, 0, 1], stpState: 0),
            LinkInfo(index: 7, name: "eth0"),
        ]
        let expected = "bridge name\tbridge id\t\tSTP enabled\tinterfaces\n"
            + "br0\t\t8000.525400aabbcc\tyes\t\ttap0\n\t\t\t\t\t\t\tveth1\n"
            + "br1\t\t8000.000000000001\tno\t\t\n"
        #expect(BrctlShow.render(links) == expected)
        #expect(BrctlShow.render(links, only: "br1") == "bridge name\tbridge id\t\tSTP enabled\tinterfaces\nbr1\t\t8000.000000000001\tno\t\t\n")
    }
}
