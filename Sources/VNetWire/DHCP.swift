// DHCP messages (RFC 2131) and options (RFC 2132).
//
// `DHCPMessage.parse` takes the UDP payload. It requires the 236-byte BOOTP header, the magic cookie, and an
// option list that stays inside the buffer and ends with END (255); any option whose length runs past the
// end makes the whole message malformed. Only the options vnet acts on are decoded; others are skipped.
// `emit` writes a reply with the fixed BOOTP header and the options given, and returns its length.

public enum DHCPMessageType: UInt8, Sendable {
    case discover = 1, offer, request, decline, ack, nak, release, inform
}

public struct DHCPOption {
    public static let pad: UInt8 = 0
    public static let subnetMask: UInt8 = 1
    public static let router: UInt8 = 3
    public static let dnsServer: UInt8 = 6
    public static let hostName: UInt8 = 12
    public static let domainName: UInt8 = 15
    public static let interfaceMTU: UInt8 = 26
    public static let broadcastAddress: UInt8 = 28
    public static let requestedAddress: UInt8 = 50
    public static let leaseTime: UInt8 = 51
    public static let messageType: UInt8 = 53
    public static let serverIdentifier: UInt8 = 54
    public static let parameterRequestList: UInt8 = 55
    public static let renewalTime: UInt8 = 58
    public static let rebindingTime: UInt8 = 59
    public static let clientIdentifier: UInt8 = 61
    public static let tftpServerName: UInt8 = 66
    public static let bootfileName: UInt8 = 67
    public static let domainSearch: UInt8 = 119
    public static let end: UInt8 = 255
}

public struct DHCPMessage: Sendable, Equatable {
    public static let bootpHeaderLength = 236
    public static let magicCookie: UInt32 = 0x6382_5363
    public static let serverPort: UInt16 = 67
    public static let clientPort: UInt16 = 68

    public var op: UInt8                 // 1 request, 2 reply
    public var transactionID: UInt32
    public var seconds: UInt16
    public var flags: UInt16             // 0x8000: broadcast
    public var clientAddress: IPv4Address     // ciaddr
    public var yourAddress: IPv4Address       // yiaddr
    public var serverAddress: IPv4Address     // siaddr
    public var relayAddress: IPv4Address      // giaddr
    public var clientMAC: MACAddress          // first 6 bytes of chaddr (htype 1, hlen 6)
    public var messageType: DHCPMessageType?
    public var requestedAddress: IPv4Address?
    public var serverIdentifier: IPv4Address?
    public var hostName: String?
    public var parameterRequestList: [UInt8]

    public init(op: UInt8, transactionID: UInt32, seconds: UInt16 = 0, flags: UInt16 = 0, clientAddress: IPv4Address = .any,
                yourAddress: IPv4Address = .any, serverAddress: IPv4Address = .any, relayAddress: IPv4Address = .any,
                clientMAC: MACAddress, messageType: DHCPMessageType?, requestedAddress: IPv4Address? = nil,
                serverIdentifier: IPv4Address? = nil, hostName: String? = nil, parameterRequestList: [UInt8] = []) {
        self.op = op
        self.transactionID = transactionID
        self.seconds = seconds
        self.flags = flags
        self.clientAddress = clientAddress
        self.yourAddress = yourAddress
        self.serverAddress = serverAddress
        self.relayAddress = relayAddress
        self.clientMAC = clientMAC
        self.messageType = messageType
        self.requestedAddress = requestedAddress
        self.serverIdentifier = serverIdentifier
        self.hostName = hostName
        self.parameterRequestList = parameterRequestList
    }

    public var wantsBroadcast: Bool { flags & 0x8000 != 0 }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> DHCPMessage {
        guard p.count >= bootpHeaderLength + 4, p.u32(236) == magicCookie else { throw .malformed }
        // htype 1 (Ethernet) with hlen 6 is the only hardware vnet serves.
        guard p.u8(1) == 1, p.u8(2) == 6 else { throw .malformed }
        var m = DHCPMessage(op: p.u8(0), transactionID: p.u32(4), seconds: p.u16(8), flags: p.u16(10),
                            clientAddress: IPv4Address(reading: p, at: 12), yourAddress: IPv4Address(reading: p, at: 16),
                            serverAddress: IPv4Address(reading: p, at: 20), relayAddress: IPv4Address(reading: p, at: 24),
                            clientMAC: MACAddress(reading: p, at: 28), messageType: nil)
        var i = 240
        var sawEnd = false
        while i < p.count {
            let code = p.u8(i)
            if code == DHCPOption.pad { i += 1; continue }
            if code == DHCPOption.end { sawEnd = true; break }
            guard i + 1 < p.count else { throw .malformed }
            let len = Int(p.u8(i + 1))
            let start = i + 2
            guard start + len <= p.count else { throw .malformed }
            switch code {
            case DHCPOption.messageType:
                guard len == 1 else { throw .malformed }
                m.messageType = DHCPMessageType(rawValue: p.u8(start))
            case DHCPOption.requestedAddress:
                if len == 4 { m.requestedAddress = IPv4Address(reading: p, at: start) }
            case DHCPOption.serverIdentifier:
                if len == 4 { m.serverIdentifier = IPv4Address(reading: p, at: start) }
            case DHCPOption.hostName:
                m.hostName = String(decoding: p.slice(start ..< start + len), as: UTF8.self)
            case DHCPOption.parameterRequestList:
                m.parameterRequestList = Array(p.slice(start ..< start + len))
            default:
                break
            }
            i = start + len
        }
        guard sawEnd else { throw .malformed }
        return m
    }
}

/// Writes a BOOTP/DHCP message and its options into a caller's buffer, never past its end.
public struct DHCPWriter {
    public let buffer: UnsafeMutableRawBufferPointer
    public private(set) var length: Int
    public private(set) var overflowed = false

    /// Starts a reply to `request` (op 2). The buffer must hold at least 240 bytes.
    public init(replyTo request: DHCPMessage, into buffer: UnsafeMutableRawBufferPointer, yourAddress: IPv4Address,
                serverAddress: IPv4Address, bootfile: String? = nil) {
        precondition(buffer.count >= 240)
        self.buffer = buffer
        buffer.zero(0 ..< 240)
        buffer.put8(0, 2); buffer.put8(1, 1); buffer.put8(2, 6); buffer.put8(3, 0)
        buffer.put32(4, request.transactionID)
        buffer.put16(10, request.flags & 0x8000)
        request.clientAddress.write(to: buffer, at: 12)
        yourAddress.write(to: buffer, at: 16)
        serverAddress.write(to: buffer, at: 20)
        request.relayAddress.write(to: buffer, at: 24)
        request.clientMAC.write(to: buffer, at: 28)
        if let bootfile {
            let b = Array(bootfile.utf8.prefix(127))
            for (k, c) in b.enumerated() { buffer[108 + k] = c }
        }
        buffer.put32(236, DHCPMessage.magicCookie)
        length = 240
    }

    public mutating func option(_ code: UInt8, _ bytes: some Collection<UInt8>) {
        var rest = Array(bytes)
        // Options longer than 255 bytes are split into several instances (RFC 3396).
        repeat {
            let chunk = rest.prefix(255)
            guard length + 2 + chunk.count + 1 <= buffer.count else { overflowed = true; return }
            buffer.put8(length, code); buffer.put8(length + 1, UInt8(chunk.count))
            for (k, c) in chunk.enumerated() { buffer[length + 2 + k] = c }
            length += 2 + chunk.count
            rest.removeFirst(chunk.count)
        } while !rest.isEmpty
    }

    public mutating func option(_ code: UInt8, address: IPv4Address) {
        let v = address.rawValue
        option(code, [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)])
    }

    public mutating func option(_ code: UInt8, u32 v: UInt32) {
        option(code, [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)])
    }

    public mutating func option(_ code: UInt8, u16 v: UInt16) { option(code, [UInt8(v >> 8), UInt8(v & 0xFF)]) }

    /// Writes END and pads to the 300-byte BOOTP minimum that some clients expect; returns the length.
    public mutating func finish() -> Int {
        guard length < buffer.count else { overflowed = true; return length }
        buffer.put8(length, DHCPOption.end)
        length += 1
        let minimum = min(300, buffer.count)
        if length < minimum { buffer.zero(length ..< minimum); length = minimum }
        return length
    }
}

/// RFC 1035 §4.1.4 names without compression, as DHCP option 119 (RFC 3397) carries them.
public enum DNSNameEncoding {
    /// Encodes each domain as labels; returns nil if a label is empty or longer than 63 bytes.
    public static func encode(_ domains: [String]) -> [UInt8]? {
        var out: [UInt8] = []
        for d in domains {
            let trimmed = d.hasSuffix(".") ? String(d.dropLast()) : d
            for label in trimmed.split(separator: ".", omittingEmptySubsequences: false) {
                let bytes = Array(label.utf8)
                guard !bytes.isEmpty, bytes.count <= 63 else { return nil }
                out.append(UInt8(bytes.count))
                out.append(contentsOf: bytes)
            }
            out.append(0)
        }
        return out
    }
}
