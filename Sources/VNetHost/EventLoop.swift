// The one event loop every mode runs on: `vnet user`, `vnet switch`, `vnet nat`, kernel NAT's services,
// `vnet tap run` and the library's thread.
//
// Theory of Operation
// -------------------
// One thread, one epoll set (`Epoll`), tags from the one registry (`EventKind`). The loop owns what every
// mode needs alike and nothing of any mode:
//   - signals, through a signalfd: SIGINT and SIGTERM stop the loop (unless another part of the program, a
//     ServiceGroup, takes those: `.auxiliary`), SIGHUP and SIGUSR1 go to the owner's `onSignal`;
//   - a stop watch: an fd whose readability ends the loop (QEMU's pidfd under `vnet run`);
//   - the turn: time is read once, the owner's `turn` runs its timers and returns its next deadline, the wait
//     lasts until then (at most a second), every ready fd is dispatched (the loop's own kinds here, the rest
//     to the owner's `dispatch`), and `afterEvents` flushes what the events produced;
//   - accept pauses (Epoll): listeners out of fds are taken out and put back by the wait itself.
// The owner keeps its state; the loop keeps only its fds and the running flag.

import CVNetShim
import VNetBuffers
#if canImport(Glibc)
import Glibc
#endif

public final class EventLoop {
    public enum Signals {
        /// No signalfd: the embedder handles signals (SIGPIPE is still ignored).
        case none
        /// SIGINT and SIGTERM stop the loop; SIGHUP and SIGUSR1 go to `onSignal`.
        case all
        /// Only SIGHUP and SIGUSR1 (to `onSignal`): SIGINT and SIGTERM are handled elsewhere.
        case auxiliary
        /// Only the stop signals (SIGINT, SIGTERM, SIGHUP), which all stop the loop (`vnet tap run`).
        case stopOnly
    }

    public let epoll: Epoll
    let signalFD: Int32
    public private(set) var running = true
    /// Opt-in busy polling (`--busy-poll USEC`): how long a turn with events keeps polling before sleeping.
    public var busyPollNanoseconds: UInt64 = 0
    /// Polls that caught an event before the loop slept.
    public private(set) var busyPollCatches: UInt64 = 0
    /// The signal that stopped the loop, 0 when something else did.
    public private(set) var stopSignal: Int32 = 0
    /// Told of SIGHUP and SIGUSR1 (and, with `.stopOnly`, of nothing: every signal stops).
    public var onSignal: ((Int32) -> Void)?

    public init(signals: Signals, epollCapacity: Int = 256) throws {
        epoll = try Epoll(capacity: epollCapacity)
        var fd: Int32 = -1
        switch signals {
        case .none: signal(SIGPIPE, SIG_IGN)
        case .all: fd = vnet_signalfd()
        case .auxiliary: fd = vnet_signalfd_aux()
        case .stopOnly: fd = vnet_stop_signalfd()
        }
        if fd < 0 && signals != .none { throw SyscallError("signalfd", -fd) }
        signalFD = fd
        stopsOnAnySignal = signals == .stopOnly
        if fd >= 0 { try epoll.add(fd, events: Epoll.readable, tag: EventKind.signal.tag()) }
    }

    let stopsOnAnySignal: Bool

    deinit { if signalFD >= 0 { Glibc.close(signalFD) } }

    /// Waits for `events` on `fd` under `kind`/`index`.
    public func add(_ fd: Int32, events: UInt32, kind: EventKind, index: Int = 0) throws {
        try epoll.add(fd, events: events, tag: kind.tag(index))
    }

    /// Ends `run` once `fd` becomes readable or hangs up.
    public func stopWhenReadable(_ fd: Int32) throws {
        try epoll.add(fd, events: Epoll.readable, tag: EventKind.stopWatch.tag())
    }

    /// Ends `run` after the current turn (on the loop's thread).
    public func stop() { running = false }

    /// Runs turns until stopped. `turn(now)` runs the owner's timers and returns the monotonic nanosecond by
    /// which the loop must come back (nil: no timer); `dispatch(kind, index, events, now)` handles a ready fd
    /// of the owner's kinds; `afterEvents()` runs after every wait.
    ///
    /// With `busyPollNanoseconds` set (opt-in), a turn that had events is followed by non-blocking waits for
    /// up to that long before the loop sleeps: the next frame of a request/response exchange usually arrives
    /// within a round trip, and catching it without a wake-up trades CPU for latency. `beforeSleep` runs each
    /// time the loop is about to block (the owner sends what it let wait for the poll, such as ACKs).
    public func run(turn: (UInt64) -> UInt64?, dispatch: (EventKind, Int, UInt32, UInt64) -> Void, afterEvents: () -> Void = {},
                    beforeSleep: () -> Void = {}) throws {
        var hadEvents = false
        while running {
            let now = Sys.monotonicNanoseconds()
            var timeout: Int32 = 1000
            if let deadline = turn(now) {
                timeout = deadline <= now ? 0 : Int32(min(1000, (deadline - now) / 1_000_000))
            }
            guard running else { break }
            var count = 0
            let handle: (UInt64, UInt32) -> Void = { tag, events in
                count += 1
                guard let (kind, index) = EventKind.of(tag) else { return }
                switch kind {
                case .signal: self.readSignals()
                case .stopWatch: self.running = false
                default: dispatch(kind, index, events, Sys.monotonicNanoseconds())
                }
            }
            if hadEvents && busyPollNanoseconds > 0 {
                let end = now &+ busyPollNanoseconds
                repeat { try epoll.wait(timeoutMilliseconds: 0, handle) } while count == 0 && running && Sys.monotonicNanoseconds() < end
                if count > 0 { busyPollCatches &+= 1 }
            }
            if count == 0 && running {
                beforeSleep()
                try epoll.wait(timeoutMilliseconds: max(timeout, 1), handle)
            }
            hadEvents = count > 0
            afterEvents()
        }
    }

    func readSignals() {
        while case let sig = vnet_signalfd_read(signalFD), sig != 0 {
            if stopsOnAnySignal || sig == SIGINT || sig == SIGTERM {
                stopSignal = sig
                running = false
            } else {
                onSignal?(sig)
            }
        }
    }
}
