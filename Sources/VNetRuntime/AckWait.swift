// ACKs that wait for the reply, under opt-in busy polling (`--busy-poll`).
//
// Theory of Operation
// -------------------
// A request from the guest is written to the host socket at once, but the ACK the gateway owes the guest for
// it may wait: in a request/response exchange the host's reply usually arrives within the busy-poll window,
// and its data segment carries the ACK, so one TAP write (and one guest interrupt) per round trip is saved
// (`tcp_acks_folded`). An ACK waits at most one more turn of the loop, or until the loop is about to sleep,
// so bulk transfers, where the guest needs ACKs to keep sending, are never held up by more than a turn.

import VNetGateway

struct AckWait {
    /// ACKs were owed at the end of the previous turn.
    var waitedOneTurn = false

    /// End of a turn: ACKs owed since the previous turn go now; newer ones may wait one turn.
    mutating func afterTurn<H>(_ gateway: Gateway<H>) {
        guard gateway.hasPendingAcks else { waitedOneTurn = false; return }
        if waitedOneTurn {
            gateway.flushPendingAcks()
            waitedOneTurn = false
        } else {
            waitedOneTurn = true
        }
    }
}
