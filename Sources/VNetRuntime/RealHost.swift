// RealHost: the gateway's HostIO over real sockets, registered in the runtime's epoll set.
//
// UDP flows use connected sockets with IP_RECVERR, so ICMP errors for a flow arrive on that flow's socket
// (errno on recv, details in the error queue). ICMP echo uses unprivileged ping sockets when
// net.ipv4.ping_group_range admits our group, and otherwise a raw ICMP socket (root), probed once at start.
// A raw socket sees every echo reply from its peer, so replies are matched by identifier in the gateway.

import CVNetShim
import VNetGateway
import VNetHost
import VNetWire
#if canImport(Glibc)
import Glibc
#endif

public final class RealHost: HostIO {
    public enum EchoMode: String, Sendable { case pingSocket = "ping socket", raw = "raw socket", unavailable }

    let epoll: Epoll
    public let echoMode: EchoMode
    /// Set by the loop before `Gateway.hostReadable`: whether the event included EPOLLERR.
    var eventHadError = false
    var ttlCache: [Int32: UInt8] = [:]

    init(epoll: Epoll) {
        self.epoll = epoll
        echoMode = RealHost.probeEchoMode()
    }

    static func probeEchoMode() -> EchoMode {
        if let fd = try? Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), Int32(IPPROTO_ICMP)) { Sys.close(fd); return .pingSocket }
        if let fd = try? Sys.socket(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_ICMP)) { Sys.close(fd); return .raw }
        return .unavailable
    }

    func register(_ fd: Int32, tag: FlowTag) -> Int32? {
        do {
            try epoll.add(fd, events: Epoll.readable, tag: tag.rawValue)
            return fd
        } catch {
            Sys.close(fd)
            return nil
        }
    }

    public func openUDP(destination: IPv4Address, port: UInt16, tag: FlowTag) -> Int32? {
        guard let fd = try? Sys.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0) else { return nil }
        do {
            try Sys.setOption(fd, Int32(IPPROTO_IP), IP_RECVERR, 1)
            _ = try Sys.connect(fd, SocketAddress(ipv4: destination.rawValue, port: port))
        } catch {
            Sys.close(fd)
            return nil
        }
        return register(fd, tag: tag)
    }

    public func openICMPEcho(destination: IPv4Address, tag: FlowTag) -> Int32? {
        let type: Int32
        switch echoMode {
        case .pingSocket: type = Int32(SOCK_DGRAM.rawValue)
        case .raw: type = Int32(SOCK_RAW.rawValue)
        case .unavailable: return nil
        }
        guard let fd = try? Sys.socket(AF_INET, type, Int32(IPPROTO_ICMP)) else { return nil }
        do {
            try Sys.setOption(fd, Int32(IPPROTO_IP), IP_RECVERR, 1)
            _ = try Sys.connect(fd, SocketAddress(ipv4: destination.rawValue, port: 0))
        } catch {
            Sys.close(fd)
            return nil
        }
        return register(fd, tag: tag)
    }

    public func setTTL(_ handle: Int32, ttl: UInt8) {
        try? Sys.setOption(handle, Int32(IPPROTO_IP), IP_TTL, Int32(max(ttl, 1)))
    }

    public func sendUDP(_ handle: Int32, _ payload: UnsafeRawBufferPointer) -> Bool {
        if case .done = Sys.send(handle, payload) { return true }
        return false
    }

    /// Echo request scratch: header + payload, reused.
    let echoBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_536, alignment: 16)

    public func sendICMPEcho(_ handle: Int32, identifier: UInt16, sequence: UInt16, payload: UnsafeRawBufferPointer) -> Bool {
        let length = 8 + payload.count
        guard length <= echoBuffer.count else { return false }
        echoBuffer.copy(payload, to: 8)
        ICMPv4Header(type: ICMPv4Header.echoRequest, code: 0, restOfHeader: UInt32(identifier) << 16 | UInt32(sequence))
            .emit(into: echoBuffer.slice(0 ..< length), messageLength: length)
        if case .done = Sys.send(handle, UnsafeRawBufferPointer(echoBuffer.slice(0 ..< length))) { return true }
        return false
    }

    func readError(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive? {
        var type: UInt8 = 0, code: UInt8 = 0
        var offender: UInt32 = 0
        var length: Int32 = 0
        let r = vnet_read_icmp_error(fd, &type, &code, &offender, buffer.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                     Int32(min(buffer.count, Int(Int32.max))), &length)
        guard r == 0 else { return nil }
        return .icmpError(type: type, code: code, offender: IPv4Address(rawValue: UInt32(bigEndian: offender)), length: Int(length))
    }

    public func receiveUDP(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive {
        switch Sys.receive(handle, into: buffer) {
        case .done(let n):
            return n <= buffer.count ? .datagram(length: n) : .ignored
        case .wouldBlock, .closed:
            if eventHadError, let e = readError(handle, into: buffer) { return e }
            return .wouldBlock
        case .failed:
            return readError(handle, into: buffer) ?? .failed
        }
    }

    public func receiveICMPEcho(_ handle: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HostReceive {
        switch Sys.receive(handle, into: buffer) {
        case .done(let n):
            guard n <= buffer.count else { return .ignored }
            let raw = UnsafeRawBufferPointer(buffer)
            var offset = 0
            if echoMode == .raw {
                guard n >= 20 else { return .ignored }
                offset = Int(raw[0] & 0x0F) * 4
            }
            guard n >= offset + 8, raw[offset] == ICMPv4Header.echoReply else { return .ignored }
            let id = UInt16(raw[offset + 4]) << 8 | UInt16(raw[offset + 5])
            let seq = UInt16(raw[offset + 6]) << 8 | UInt16(raw[offset + 7])
            let length = n - offset - 8
            if length > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + offset + 8, byteCount: length) }
            return .echoReply(identifier: echoMode == .raw ? id : nil, sequence: seq, length: length)
        case .wouldBlock, .closed:
            if eventHadError, let e = readError(handle, into: buffer) { return e }
            return .wouldBlock
        case .failed:
            return readError(handle, into: buffer) ?? .failed
        }
    }

    public func close(_ handle: Int32) {
        epoll.remove(handle)
        Sys.close(handle)
    }
}
