// Returning a gateway to the state `init` left it in without allocating its buffers again.
//
// The fuzz targets reuse one gateway per process: a fresh one costs about 650 KiB of zeroed buffers (the guest
// queue, TCP peek buffer, scratch, reassembly slots), which under AddressSanitizer capped every target at 1-2
// thousand inputs a second. `reset` must leave nothing behind that a later input could observe: each engine
// resets itself (GatewayEngines.swift), and every other stored property of `Gateway` is listed here (a new one must be added; `GatewayResetTests` compares a used-then-reset
// gateway with a fresh one). Host handles still open are closed through `host`, as `deinit` does.

import VNetBuffers
import VNetServices
import VNetWire

extension Gateway {
    /// Closes every flow and forgets all state: counters, flows, leases, neighbours, reassembly, TFTP
    /// transfers, DNS upstreams and local names, queued frames. `config`, `host`, `leaseObserver` and the TFTP
    /// file source are kept (the server restarts empty); the ISN secret is kept.
    public func reset() {
        for i in udpEngine.flows.activeIndices { if let f = udpEngine.flows[i], f.replyTo == nil { host.close(f.handle) } }
        for i in icmpEngine.flows.activeIndices { if let f = icmpEngine.flows[i] { host.close(f.handle) } }
        for i in tcpEngine.flows.activeIndices { if let f = tcpEngine.flows[i] { host.close(f.handle) } }
        tcpEngine.reset()
        udpEngine.reset()
        icmpEngine.reset()
        dnsForwarder.reset()
        neighbours.reset()
        routerAdvertiser.reset()
        tftp?.closeAll()
        if let t = tftp { tftp = TFTPServer(files: t.files, mtu: config.mtu, capacity: config.tftpTransferCapacity) }
        counters = GatewayCounters()
        dhcp = DHCPServer(config: dhcp.config)
        localDNS = LocalDNSRecords()
        leaseNames = LocalDNSRecords()
        lastPollTime = .zero
        ipIdentification = 0
        fragmentIdentification = 0
        reassembler.reset()
        lastSweep = .zero
        guestChecksumPartial = false
        heldGuestFrame = UnsafeRawBufferPointer(start: nil, count: 0)
        ingressGroup = nil
        toGuest.reset(zeroing: false)
        // The buffers keep their bytes (the queue's storage, scratch, the TCP peek buffer, reassembly slots), as
        // they do between packets in a running vnet: every producer writes each byte it commits, and the padding
        // checks of the fuzz targets and tests run against stale bytes, which is the realistic case.
    }
}
