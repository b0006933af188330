// Congestion control for host -> guest TCP data: how much vnet may have in flight towards the guest's NIC.
//
// Theory of Operation
// -------------------
// The guest's window says what its socket can take, not what its NIC can: QEMU's rtl8139 (C+ mode), ne2k_pci,
// pcnet and tulip drop frames when their small receive rings are full (rtl8139's C+ mode has no flow control
// at all), while the stream backend hands QEMU a whole window of segments at once. Sending a full window into
// such a NIC loses most of it, every time, and each loss waited for the retransmission timer (1 s): 8 MiB took
// a minute on rtl8139 against 0.2 s through libslirp, whose BSD stack has a congestion window.
// So each flow keeps one too (RFC 5681), in bytes, that only a loss brings into play:
//   * it starts open (no cap but the guest's window: a virtual NIC that loses nothing, virtio or e1000, gets
//     whole windows at once as before; no slow start on a link with a microsecond RTT); after a loss it grows
//     by the bytes acknowledged (slow start) up to `ssthresh`, then by about one segment per window
//     (congestion avoidance), so it settles near what the NIC's ring takes;
//   * three duplicate ACKs (fast retransmit) halve it and enter recovery (RFC 6582, NewReno): each partial ACK
//     (one that leaves `recover` unacknowledged) resends the next hole at once instead of waiting for the
//     timer, and the ACK that covers `recover` ends recovery;
//   * a retransmission timeout sets it to one segment (go-back-N follows, slow start regrows it).
// What may be sent is min(guest window, congestion window) beyond sndUna (`sendWindow`). No allocation, no
// Foundation: it is on the packet path.

import VNetBuffers

enum TCPCongestion {
    /// The window before any loss, and its cap: above any guest window (at most 2^30 with scaling), and far
    /// enough from UInt32's end that growth cannot overflow.
    static let maximumWindow: UInt32 = 1 << 30
}

extension Gateway {
    @inline(__always) func initialCongestionWindow(_ f: inout TCPFlow) {
        if f.cwnd == 0 { f.cwnd = TCPCongestion.maximumWindow }
    }

    /// Bytes beyond sndUna the flow may have sent: the guest's window capped by the congestion window.
    @inline(__always) func sendWindow(_ f: inout TCPFlow) -> UInt32 {
        initialCongestionWindow(&f)
        return min(f.guestWindow, f.cwnd)
    }

    /// An ACK that acknowledged `acked` new bytes, up to `ack`. Returns true for a partial ACK in recovery: the
    /// caller resends the first unacknowledged segment once the acknowledged bytes left the socket.
    func congestionAcked(_ f: inout TCPFlow, acked: UInt32, ack: UInt32) -> Bool {
        initialCongestionWindow(&f)
        let mss = UInt32(max(f.mss, 1))
        if f.inRecovery {
            if seqLT(ack, f.recover) {
                // RFC 6582 §3.2 step 3: deflate by what was acknowledged, add back one segment.
                f.cwnd = (f.cwnd > acked ? f.cwnd - acked : 0) + mss
                return true
            }
            f.inRecovery = false
            f.cwnd = max(f.ssthresh, mss)
            return false
        }
        if f.cwnd >= TCPCongestion.maximumWindow {
            return false
        } else if f.cwnd < f.ssthresh {
            f.cwnd = min(f.cwnd &+ acked, TCPCongestion.maximumWindow)
        } else {
            let grow = UInt32(min(UInt64(mss) * UInt64(acked) / UInt64(f.cwnd), UInt64(mss)))
            f.cwnd = min(f.cwnd &+ max(grow, 1), TCPCongestion.maximumWindow)
        }
        return false
    }

    /// A loss: three duplicate ACKs (`timeout` false) or the retransmission timer. Call before rewinding.
    func congestionLoss(_ f: inout TCPFlow, timeout: Bool) {
        initialCongestionWindow(&f)
        let mss = UInt32(max(f.mss, 1))
        f.ssthresh = max(f.inFlight / 2, 2 * mss)
        if timeout {
            f.cwnd = mss
            f.inRecovery = false
        } else {
            f.cwnd = f.ssthresh
            f.inRecovery = true
        }
    }
}
