// ARP for IPv4 over Ethernet (RFC 826). Only hardware type 1 / protocol 0x0800 with 6/4-byte addresses
// is accepted; anything else is malformed for vnet's purposes.

public struct ARPPacket: Hashable, Sendable {
    public static let length = 28

    public enum Operation: Hashable, Sendable {
        case request, reply, unknown(UInt16)
        public init(_ v: UInt16) { self = v == 1 ? .request : v == 2 ? .reply : .unknown(v) }
        public var rawValue: UInt16 {
            switch self { case .request: 1; case .reply: 2; case .unknown(let v): v }
        }
    }

    public var operation: Operation
    public var senderMAC: MACAddress
    public var senderIP: IPv4Address
    public var targetMAC: MACAddress
    public var targetIP: IPv4Address

    public init(operation: Operation, senderMAC: MACAddress, senderIP: IPv4Address, targetMAC: MACAddress, targetIP: IPv4Address) {
        self.operation = operation
        self.senderMAC = senderMAC
        self.senderIP = senderIP
        self.targetMAC = targetMAC
        self.targetIP = targetIP
    }

    public static func parse(_ p: UnsafeRawBufferPointer) throws(WireError) -> ARPPacket {
        guard p.count >= 28, p.u16(0) == 1, p.u16(2) == 0x0800, p.u8(4) == 6, p.u8(5) == 4 else { throw .malformed }
        return ARPPacket(operation: Operation(p.u16(6)), senderMAC: MACAddress(reading: p, at: 8), senderIP: IPv4Address(reading: p, at: 14),
                         targetMAC: MACAddress(reading: p, at: 18), targetIP: IPv4Address(reading: p, at: 24))
    }

    @discardableResult
    public func emit(into p: UnsafeMutableRawBufferPointer) -> Int {
        p.put16(0, 1); p.put16(2, 0x0800); p.put8(4, 6); p.put8(5, 4)
        p.put16(6, operation.rawValue)
        senderMAC.write(to: p, at: 8); senderIP.write(to: p, at: 14)
        targetMAC.write(to: p, at: 18); targetIP.write(to: p, at: 24)
        return 28
    }
}
