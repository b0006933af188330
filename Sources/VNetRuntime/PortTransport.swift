// A transport that brings its own protocol: the plug-in point for new kinds of port.
//
// Theory of Operation
// -------------------
// The transports that are one fd and one framing (stream, datagram, TAP) are built into `GuestPort`. A
// transport with a protocol of its own (vhost-user's control socket, memory table and rings; a VXLAN uplink's
// remotes and encapsulation) is a `PortTransport`, wrapped by a `GuestPort` of kind `.transport`, so every
// runtime sees one port type. The runtime (`vnet user`'s single guest, or a switch port in `vnet nat`,
// `vnet switch` and the library) hands it a `PortContext` and never looks inside:
//   - fds: the transport registers its own with `context.register(fd, events:, token:)`; events on them come
//     back to `handle(token:events:now:)`. The tag is `EventKind.transport` with the port's slot and the token,
//     so no transport adds a case to any loop's dispatch;
//   - in: each received frame goes to `context.deliver(frame, offload:)` (with the virtio-net header when the
//     frame carries offloads), and `context.deliveredBatch()` ends a batch (the gateway sends what it
//     gathered). A transport that leaves frames in place until its next event says `holdsFrames`;
//   - out: the runtime calls `flush(now:)` after every batch of events while `context.queue` has frames; a
//     transport that `carriesOffloads` gets a queue with a virtio-net header before each frame, and the switch
//     finishes super-segments and partial checksums in software for every other port;
//   - peers: `context.peerConnected`/`peerLeft` when the far end (a QEMU, a remote) comes or goes: the runtime
//     publishes the port event, forgets the port's MACs and ends the guest's flows;
//   - timers: `tick(now:)` runs every loop turn and returns the next deadline it needs.
// A transport also offers control commands and counters of its own, listed beside the runtime's.

import Logging
import VNetBuffers
import VNetHost
import VNetWire

/// What a transport is before it is opened: parsed options, carried by `SwitchEndpoint.transport` and
/// `GuestTransport.transport`.
public protocol PortTransportFactory: Sendable {
    /// As printed in start-up lines and `ports` (`vhost-user unix:/run/vm0.sock`).
    var description: String { get }
    /// The port's frames keep a virtio-net header: it takes and makes TCP super-segments and partial
    /// checksums. Decided before the port opens (the gateway's queue is laid out for it).
    var carriesOffloads: Bool { get }
    /// Opens nothing yet: `start(_:)` on the result does.
    func make(logger: Logger) throws -> PortTransport
}

/// A factory inside an endpoint enum: equal when it describes the same port.
public struct PluggedTransport: Equatable, Sendable, CustomStringConvertible {
    public let factory: any PortTransportFactory
    public init(_ factory: any PortTransportFactory) { self.factory = factory }
    public var description: String { factory.description }
    public static func == (a: PluggedTransport, b: PluggedTransport) -> Bool { a.description == b.description }
}

public protocol PortTransport: AnyObject {
    /// Its type in `info-network` (`vhost-user`, `vxlan`).
    var typeName: String { get }
    /// A line on its state now (peer, remotes), shown in `ports` and start-up.
    var description: String { get }
    var isConnected: Bool { get }
    /// Frames handed to `deliver` stay in place until the next `handle` (the gateway may gather TCP data).
    var holdsFrames: Bool { get }
    /// Opens its fds and registers them with the loop. Called once, before the loop runs.
    func start(_ context: PortContext) throws
    /// An event on the fd it registered under `token`.
    func handle(token: Int, events: UInt32, now: UInt64)
    /// Sends what `context.queue` holds. Returns true when frames are left waiting for the peer to take them
    /// (the runtime then stops refilling the queue until the transport flushes again).
    func flush(now: UInt64) -> Bool
    /// Periodic work; returns the monotonic time (ns) it next needs a turn, or nil.
    func tick(now: UInt64) -> UInt64?
    /// The port's frame counters.
    var counters: PortCounters { get }
    /// Counters of its own, `name value` (prefixed with the port's name by the runtime).
    var extraCounters: [(String, UInt64)] { get }
    /// The far ends it reaches now (a VXLAN uplink's remotes), each a label of the metrics' `vnet_port_peer`.
    var peers: [String] { get }
    /// Lines printed at start-up under the port's own (the QEMU arguments that reach it).
    var startupLines: [String] { get }
    /// Commands it serves on the control socket. Several ports may offer the same name: the runtime asks each
    /// in turn, and a handler returns nil for a request that is not for it (another VNI, another path).
    var controlCommands: [TransportCommand] { get }
    /// Closes every fd (the loop is ending or the port is removed).
    func close()
}

extension PortTransport {
    public var holdsFrames: Bool { false }
    public func tick(now: UInt64) -> UInt64? { nil }
    public var extraCounters: [(String, UInt64)] { [] }
    public var peers: [String] { [] }
    public var startupLines: [String] { [] }
    public var controlCommands: [TransportCommand] { [] }
}

/// A control command a transport serves; `handler` returns nil when the request is for another port.
public struct TransportCommand {
    public let name: String
    public let help: String
    public let handler: (ControlArguments) throws -> ControlResult?
    public init(_ name: String, help: String, handler: @escaping (ControlArguments) throws -> ControlResult?) {
        self.name = name
        self.help = help
        self.handler = handler
    }
}

/// What the runtime gives a transport: its output queue, the loop, and where frames and peer news go.
public final class PortContext {
    /// Frames for this port (with a virtio-net header before each when the port `carriesOffloads`).
    public let queue: FrameQueue
    public let mtu: Int
    public let logger: Logger
    let epoll: Epoll
    /// The port's slot, the high half of its tags' index.
    let slot: Int
    let deliverFrame: (UnsafeRawBufferPointer, VirtioNetHeader?) -> Void
    let endBatch: () -> Void
    let peerNews: (_ connected: Bool, _ peer: String, _ reason: String) -> Void
    let tooBig: (UnsafeRawBufferPointer, Int) -> Void

    init(queue: FrameQueue, mtu: Int, logger: Logger, epoll: Epoll, slot: Int,
         deliver: @escaping (UnsafeRawBufferPointer, VirtioNetHeader?) -> Void, endBatch: @escaping () -> Void,
         peerNews: @escaping (Bool, String, String) -> Void, tooBig: @escaping (UnsafeRawBufferPointer, Int) -> Void = { _, _ in }) {
        self.queue = queue
        self.mtu = mtu
        self.logger = logger
        self.epoll = epoll
        self.slot = slot
        self.deliverFrame = deliver
        self.endBatch = endBatch
        self.peerNews = peerNews
        self.tooBig = tooBig
    }

    /// Tokens are the transport's own numbering of its fds, 0 ..< `maximumTokens`.
    public static let maximumTokens = 1 << 16

    static func tag(slot: Int, token: Int) -> UInt64 { EventKind.transport.tag(slot << 16 | (token & 0xffff)) }
    static func split(_ index: Int) -> (slot: Int, token: Int) { (index >> 16, index & 0xffff) }

    public func register(_ fd: Int32, events: UInt32, token: Int) throws {
        precondition(token >= 0 && token < PortContext.maximumTokens, "transport token out of range")
        try epoll.add(fd, events: events, tag: PortContext.tag(slot: slot, token: token))
    }

    public func modify(_ fd: Int32, events: UInt32, token: Int) throws {
        try epoll.modify(fd, events: events, tag: PortContext.tag(slot: slot, token: token))
    }

    public func unregister(_ fd: Int32) { epoll.remove(fd) }

    /// A listener registered under `token` whose accept failed with `error`: when fds ran out, it leaves the set
    /// for a while instead of waking the loop again at once (the loop's accept pause, as for every listener).
    public func pauseListenerIfShort(_ fd: Int32, error: Int32, token: Int) {
        _ = epoll.pauseListenerIfShort(fd, error: error, tag: PortContext.tag(slot: slot, token: token))
    }

    /// One received frame (a plain wire frame: `offload` nil).
    @inline(__always)
    public func deliver(_ frame: UnsafeRawBufferPointer, offload: VirtioNetHeader?) { deliverFrame(frame, offload) }

    /// Ends a batch of `deliver` calls: what the gateway gathered from them goes out.
    public func deliveredBatch() { endBatch() }

    /// The far end arrived (`peer` says who).
    public func peerConnected(_ peer: String) { peerNews(true, peer, "connected") }

    /// A queued frame does not fit the port's path (IP MTU `mtu`, DF set) and is dropped: the gateway, where
    /// there is one, answers its sender with ICMP "fragmentation needed" / "packet too big" (GatewayPathMTU.swift).
    public func frameTooBig(_ frame: UnsafeRawBufferPointer, mtu: Int) { tooBig(frame, mtu) }

    /// The far end went away: its guests' flows end and its MACs are forgotten.
    public func peerLeft(_ peer: String, reason: String) { peerNews(false, peer, reason) }
}

extension TransportCommand {
    /// The transports' commands as control commands: one per name, asking each port that offers it in turn.
    static func merged(_ transports: [PortTransport]) -> [ControlCommand] {
        var order: [String] = []
        var byName: [String: (help: String, handlers: [(ControlArguments) throws -> ControlResult?])] = [:]
        for t in transports {
            for c in t.controlCommands {
                if byName[c.name] == nil { order.append(c.name); byName[c.name] = (c.help, []) }
                byName[c.name]!.handlers.append(c.handler)
            }
        }
        return order.map { name in
            let handlers = byName[name]!.handlers
            return ControlCommand(name, help: byName[name]!.help) { arguments in
                for h in handlers { if let r = try h(arguments) { return r } }
                throw ControlError("\(name): no port matches these arguments")
            }
        }
    }
}
