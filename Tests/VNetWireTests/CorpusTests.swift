// The corpus as a whole: what the 17 files hold (checked against `tshark -r FILE`), that every frame walks
// through every VNetWire view, and that no prefix of any frame crashes any view.

import Testing
@testable import VNetWire

@Suite struct CorpusTests {
    /// Frame counts and link types per file, from `tshark -r FILE` and the pcap global header.
    static let inventory: [(String, Int, UInt32)] = [
        (Corpus.dns4, 2, 1), (Corpus.dns6, 2, 1), (Corpus.arp, 2, 1), (Corpus.dhcp, 4, 1),
        (Corpus.icmpSLL2v6, 2, 276), (Corpus.icmpSLL2v4, 2, 276), (Corpus.nc8080, 12, 1), (Corpus.ncIdent, 4, 1),
        (Corpus.ndp, 2, 1), (Corpus.ping6, 2, 1), (Corpus.ping4, 2, 1), (Corpus.tcp4, 14, 1), (Corpus.tcp6, 19, 1),
        (Corpus.tftp4, 7, 1), (Corpus.tftp6, 7, 1), (Corpus.tftpErr4, 2, 1), (Corpus.tftpErr6, 3, 1),
    ]

    @Test func loadsAllSeventeenFiles() {
        #expect(Corpus.loaded.errors == [])
        #expect(Corpus.files.count == 17)
        #expect(Corpus.allFrames.count == 88)
        for (name, count, linkType) in Self.inventory {
            let file = Corpus.files.first { $0.name == name }
            #expect(file?.frames.count == count, "\(name)")
            #expect(file?.linkType == linkType, "\(name)")
        }
    }

    @Test func framesAreCompleteAndOneIsOversized() {
        // No record was cut by the snap length, so lengths inside the frames can be trusted.
        #expect(Corpus.allFrames.allSatisfy { $0.captured.count == $0.originalLength })
        // One frame is 2974 bytes: tcp_qemucapt-41b49cb5 #10, captured before segmentation offload.
        let big = Corpus.allFrames.filter { $0.captured.count > 1514 }
        #expect(big.map(\.testDescription) == ["\(Corpus.tcp4)#10", "\(Corpus.tcp6)#14"])
        #expect(big.map(\.captured.count) == [2974, 2930])
    }

    @Test(arguments: Corpus.allFrames)
    func everyFrameDissects(_ f: PcapFrame) throws {
        _ = try dissect(f)
    }

    // The IPv6 frames (walked by the test's own minimal IPv6 reader) carry what tshark says: ICMPv6 for
    // ping/NDP/the SLL2 ping, UDP for DNS and TFTP, TCP for the echo session.
    @Test(arguments: [
        (Corpus.icmpSLL2v6, UInt8(58)), (Corpus.ndp, 58), (Corpus.ping6, 58), (Corpus.dns6, 17), (Corpus.tftp6, 17),
        (Corpus.tftpErr6, 17), (Corpus.tcp6, 6),
    ] as [(String, UInt8)])
    func ipv6NextHeaders(file: String, nextHeader: UInt8) throws {
        let frames = Corpus.frames(file)
        #expect(!frames.isEmpty)
        for f in frames {
            #expect(f.etherType == EtherType.ipv6.rawValue)
            #expect(try dissect(f).ipv6NextHeader == nextHeader, "\(f.testDescription)")
        }
    }

    // A frame cut at any length is either fully dissected (every layer the whole frame has) or dropped as
    // malformed at some layer: never a crash, and the cut-off is exactly where the last layer ends (IPv4:
    // link header + total length; IPv6: + 40 + payload length; ARP: + 28; other EtherTypes: the link header).
    @Test(arguments: Corpus.allFrames)
    func truncatedFramesDissectOnlyWhenComplete(_ f: PcapFrame) throws {
        let full = try dissect(f)
        let required: Int
        if let ip = full.ipv4 { required = f.linkHeaderLength + ip.totalLength }
        else if let l4 = full.l4 { required = l4.upperBound }
        else if full.arp != nil { required = f.linkHeaderLength + 28 }
        else { required = f.linkHeaderLength }
        var wrong: [Int] = []
        for n in f.linkHeaderLength ... f.captured.count {
            var g = f
            g.captured = Array(f.captured.prefix(n))
            let ok = (try? dissect(g)) != nil
            if ok != (n >= required) { wrong.append(n) }
        }
        #expect(wrong.isEmpty, "lengths \(wrong.prefix(10)) disagree; required \(required)")
    }

    enum View: String, CaseIterable, Sendable {
        case ethernet, arp, ipv4, udp, tcp, icmp, dhcp, dnsHeader, dnsQuestion
    }

    enum Parsed: Equatable {
        case ethernet(EthernetHeader), arp(ARPPacket), ipv4(IPv4Header), udp(UDPHeader), tcp(TCPHeader), icmp(ICMPv4Header)
        case dhcp(DHCPMessage), dns(DNSHeader), question(Int)
    }

    static func run(_ v: View, _ b: UnsafeRawBufferPointer) -> Parsed? {
        switch v {
        case .ethernet: (try? EthernetHeader.parse(b)).map(Parsed.ethernet)
        case .arp: (try? ARPPacket.parse(b)).map(Parsed.arp)
        case .ipv4: (try? IPv4Header.parse(b)).map(Parsed.ipv4)
        case .udp: (try? UDPHeader.parse(b)).map(Parsed.udp)
        case .tcp: (try? TCPHeader.parse(b)).map(Parsed.tcp)
        case .icmp: (try? ICMPv4Header.parse(b)).map(Parsed.icmp)
        case .dhcp: (try? DHCPMessage.parse(b)).map(Parsed.dhcp)
        case .dnsHeader: (try? DNSHeader.parse(b)).map(Parsed.dns)
        case .dnsQuestion: DNSReplies.questionEnd(b).map(Parsed.question)
        }
    }

    /// Runs `view` on every prefix of `b[start...]`; returns the first length that parses (nil if none) and
    /// the lengths where the prefix property breaks: once a prefix parses, every longer one parses the same.
    /// With `limit`, only lengths up to it and the full length are tried.
    static func sweep(_ view: View, _ b: UnsafeRawBufferPointer, from start: Int, limit: Int? = nil) -> (boundary: Int?, value: Parsed?, broken: [Int]) {
        var boundary: Int? = nil, first: Parsed? = nil, broken: [Int] = []
        let all = b.count - start
        let lengths = limit.map { Array(0 ... min($0, all)) + ($0 < all ? [all] : []) } ?? Array(0 ... all)
        for n in lengths {
            let r = run(view, b.slice(start ..< start + n))
            if boundary != nil {
                if r != first { broken.append(n) }
            } else if r != nil {
                boundary = n; first = r
            }
        }
        return (boundary, first, broken)
    }

    // Every view, over the prefixes of the bytes at every layer boundary of every frame (and at two odd
    // offsets, so views see bytes of other protocols): no crash, and the prefix property holds. At a view's
    // own layer every prefix is tried, and the first length that parses is exactly the one the protocol
    // defines, and it parses to what the full frame gave. Elsewhere (views over other protocols' bytes)
    // lengths 0...128 and the full length are tried, to keep the sweep fast in debug builds.
    @Test(arguments: Corpus.allFrames)
    func everyViewOverEveryPrefix(_ f: PcapFrame) throws {
        let d = try dissect(f)
        var starts: Set<Int> = [0, 1, f.linkHeaderLength, f.linkHeaderLength + 7]
        if let l4 = d.l4 { starts.insert(l4.lowerBound) }
        if let app = d.app { starts.insert(app.lowerBound) }
        starts = starts.filter { $0 <= f.captured.count }

        var own: [(View, Int, Int, Parsed)] = []       // view, start, expected boundary, expected value
        if let e = d.ethernet { own.append((.ethernet, 0, 14, .ethernet(e))) }
        if let a = d.arp { own.append((.arp, f.linkHeaderLength, 28, .arp(a))) }
        if let ip = d.ipv4 { own.append((.ipv4, f.linkHeaderLength, ip.totalLength, .ipv4(ip))) }
        if let l4 = d.l4 {
            if let u = d.udp { own.append((.udp, l4.lowerBound, u.length, .udp(u))) }
            if let t = d.tcp { own.append((.tcp, l4.lowerBound, t.headerLength, .tcp(t))) }
            if let i = d.icmp { own.append((.icmp, l4.lowerBound, 8, .icmp(i))) }
        }
        if let app = d.app {
            if let m = d.dhcp {
                let end = Self.dhcpEnd(Array(f.captured[app]))
                own.append((.dhcp, app.lowerBound, end + 1, .dhcp(m)))
            }
            if let h = d.dns {
                own.append((.dnsHeader, app.lowerBound, 12, .dns(h)))
                own.append((.dnsQuestion, app.lowerBound, 33, .question(33)))
            }
        }
        #expect(!own.isEmpty || f.etherType == EtherType.ipv6.rawValue)

        f.captured.withUnsafeBytes { b in
            for view in View.allCases {
                for start in starts {
                    let mine = own.first(where: { $0.0 == view && $0.1 == start })
                    let (boundary, value, broken) = Self.sweep(view, b, from: start, limit: mine == nil ? 128 : nil)
                    #expect(broken.isEmpty, "\(view) at \(start): prefix property broken at \(broken.prefix(5))")
                    if let (_, _, expectedBoundary, expectedValue) = mine {
                        #expect(boundary == expectedBoundary, "\(view) at \(start)")
                        #expect(value == expectedValue, "\(view) at \(start)")
                    }
                }
            }
        }
    }

    /// The offset of the END option, walking the options the RFC 2132 way (PAD and END are single bytes).
    static func dhcpEnd(_ m: [UInt8]) -> Int {
        var i = 240
        while i < m.count {
            switch m[i] {
            case 0: i += 1
            case 255: return i
            default: i += 2 + Int(m[i + 1])
            }
        }
        return -1
    }
}
