// The guest's memory as a vhost-user backend sees it: SET_MEM_TABLE's regions, mapped, and the two address
// translations the rings need.
//
// Theory of Operation
// -------------------
// QEMU shares the guest's RAM as a few regions (a memfd each, or one memfd at several offsets). Each region
// is known by three addresses: where it sits in guest-physical space (descriptor buffers are guest-physical),
// where QEMU mapped it (SET_VRING_ADDR's ring addresses are QEMU virtual addresses), and where the backend
// mapped it (a pointer). `validate` refuses a table before anything is mapped: no region, more than
// `maximumRegions`, a zero-sized or huge region, an address range that wraps, or two regions overlapping in
// either address space. `translate` takes an address and a length and returns a pointer only when the whole
// range lies inside one region, with every sum checked for overflow; a buffer straddling two regions is
// refused (Linux never hands one out: regions are page-aligned and a buffer never crosses a page it did not
// allocate across). The table does not map or unmap: the port does (mmap is a syscall) and hands in the
// pointers. Lookups walk at most 8 regions, with no allocation.

public struct VhostUserMemoryTable {
    public struct Region {
        public var descriptor: VhostUserRegionDescriptor
        /// Where the backend mapped the region's first byte.
        public var base: UnsafeMutableRawPointer
        public init(descriptor: VhostUserRegionDescriptor, base: UnsafeMutableRawPointer) {
            self.descriptor = descriptor
            self.base = base
        }
    }

    /// Biggest region accepted (1 TiB): larger is a hostile table, not a guest.
    public static let maximumRegionSize: UInt64 = 1 << 40

    public private(set) var regions: [Region]

    public init() { regions = [] }

    /// Regions already validated and mapped.
    public init(regions: [Region]) throws(VhostUserError) {
        try VhostUserMemoryTable.validate(regions.map(\.descriptor))
        self.regions = regions
    }

    public var isEmpty: Bool { regions.isEmpty }

    public static func validate(_ table: [VhostUserRegionDescriptor]) throws(VhostUserError) {
        guard !table.isEmpty else { throw .badMemoryTable("no regions") }
        guard table.count <= VhostUserMessage.maximumRegions else { throw .badMemoryTable("\(table.count) regions") }
        for (i, r) in table.enumerated() {
            guard r.size > 0 else { throw .badMemoryTable("region \(i) is empty") }
            guard r.size <= maximumRegionSize else { throw .badMemoryTable("region \(i) is \(r.size) bytes (at most \(maximumRegionSize))") }
            let (_, o1) = r.guestPhysicalAddress.addingReportingOverflow(r.size)
            let (_, o2) = r.userAddress.addingReportingOverflow(r.size)
            let (_, o3) = r.mmapOffset.addingReportingOverflow(r.size)
            guard !o1, !o2, !o3 else { throw .badMemoryTable("region \(i) wraps the address space") }
            for j in 0 ..< i {
                let s = table[j]
                if overlap(r.guestPhysicalAddress, r.size, s.guestPhysicalAddress, s.size) {
                    throw .badMemoryTable("regions \(j) and \(i) overlap in guest-physical space")
                }
                if overlap(r.userAddress, r.size, s.userAddress, s.size) {
                    throw .badMemoryTable("regions \(j) and \(i) overlap in QEMU's address space")
                }
            }
        }
    }

    @inline(__always)
    static func overlap(_ a: UInt64, _ aSize: UInt64, _ b: UInt64, _ bSize: UInt64) -> Bool {
        a < b &+ bSize && b < a &+ aSize
    }

    /// A pointer to `length` bytes at guest-physical `address`, or nil unless they all lie in one region.
    @inline(__always)
    public func guestPhysical(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions {
            if let p = VhostUserMemoryTable.inside(address, length, start: r.descriptor.guestPhysicalAddress, size: r.descriptor.size, base: r.base) { return p }
        }
        return nil
    }

    /// A pointer to `length` bytes at QEMU's virtual `address`, or nil unless they all lie in one region.
    public func userAddress(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions {
            if let p = VhostUserMemoryTable.inside(address, length, start: r.descriptor.userAddress, size: r.descriptor.size, base: r.base) { return p }
        }
        return nil
    }

    @inline(__always)
    static func inside(_ address: UInt64, _ length: UInt64, start: UInt64, size: UInt64, base: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer? {
        guard address >= start else { return nil }
        let offset = address - start
        guard offset < size || (offset == size && length == 0) else { return nil }
        guard length <= size - offset else { return nil }
        return base + Int(offset)
    }
}
