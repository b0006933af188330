// The gateway's TFTP service (`tftp=DIR`): datagrams to the gateway address, port 69, go to the pure
// `TFTPServer` (VNetServices/TFTPServer.swift), whose replies leave from port 69 to the client's port.
// The runtime supplies the file source (`enableTFTP`); without one, port 69 is NAT'd like any UDP port.
// TFTP is one of the gateway's own services, so it is served under restrict=on too, as in libslirp.
// Every refusal is answered with a TFTP ERROR and counted under one drop reason.

import VNetBuffers
import VNetServices
import VNetWire

extension Gateway {
    /// Turns on the TFTP server, reading files through `files`.
    public func enableTFTP(files: any TFTPFileSource) {
        tftp?.closeAll()
        tftp = TFTPServer(files: files, mtu: config.mtu, capacity: config.tftpTransferCapacity)
    }

    public var tftpTransferCount: Int { tftp?.activeTransfers ?? 0 }

    /// Where the server writes its packets: after the UDP header in `scratch`.
    var tftpOutput: UnsafeMutableRawBufferPointer { scratch.slice(8 ..< 8 + TFTPServer.maximumPacket) }

    func handleTFTP(_ payload: UnsafeRawBufferPointer, ip: IPv4Header, udp: UDPHeader, mac: MACAddress, now: Instant) {
        let peer = TFTPPeer(address: ip.source, port: udp.sourcePort, mac: mac)
        guard let result = tftp?.handle(payload, from: peer, now: now, into: tftpOutput) else { return }
        switch result.event {
        case .started: counters.count(.tftpTransfersStarted); counters.count(.tftpBlocksSent)
        case .block: counters.count(.tftpBlocksSent)
        case .completed: counters.count(.tftpTransfersCompleted)
        case .refused(let why):
            counters.count(.tftpErrorsSent)
            switch why {
            case .malformed: drop(.tftpMalformed)
            case .badPath, .accessDenied: drop(.tftpPathRefused)
            case .tooManyTransfers: drop(.tftpTooManyTransfers)
            case .writeRequest, .unsupportedMode, .notFound, .badOption, .readFailed: drop(.tftpRefused)
            }
        case .ignored(.unknownTransfer): drop(.tftpUnknownTransfer)
        case .ignored(.malformed): drop(.tftpMalformed)
        case .ignored(.duplicateAck), .ignored(.clientError): break
        }
        guard result.length > 0 else { return }
        sendTFTP(to: peer, length: result.length)
    }

    func sendTFTP(to peer: TFTPPeer, length: Int) {
        sendUDPToGuest(mac: peer.mac, source: IPAddress(config.gatewayAddress), sourcePort: TFTPServer.port,
                       destination: IPAddress(peer.address), destinationPort: peer.port, payloadLength: length)
    }

    /// Retransmits overdue TFTP packets and abandons transfers whose client went quiet.
    func tftpTimers(now: Instant) {
        guard tftp != nil else { return }
        let out = tftpOutput
        tftp!.poll(now: now, into: out, send: { peer, length in
            counters.count(.tftpRetransmits)
            sendTFTP(to: peer, length: length)
        }, gaveUp: { drop(.tftpTimedOut) })
    }
}
