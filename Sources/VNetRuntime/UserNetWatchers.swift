// Extra fds on `vnet user`'s loop, for front ends that speak another tool's protocol (the slirp4netns API
// socket): `watch` registers an fd with a handler that runs when it is readable (or hangs up), `unwatch`
// removes it. Slots are reused; the handler runs on the loop's thread, like everything else.

import VNetBuffers
import VNetHost

extension UserNetRuntime {
    /// Calls `handler` whenever `fd` is readable; returns the slot for `unwatch`.
    @discardableResult
    public func watch(_ fd: Int32, handler: @escaping () -> Void) throws -> Int {
        let slot = watchers.firstIndex(where: { $0 == nil }) ?? watchers.count
        try epoll.add(fd, events: Epoll.readable, tag: EventKind.watcher.tag(slot))
        if slot == watchers.count { watchers.append(handler) } else { watchers[slot] = handler }
        return slot
    }

    /// Stops watching `fd` (registered in `slot`); the caller closes it.
    public func unwatch(_ fd: Int32, slot: Int) {
        epoll.remove(fd)
        if slot < watchers.count { watchers[slot] = nil }
    }
}
