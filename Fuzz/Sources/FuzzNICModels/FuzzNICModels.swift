// Fuzz target: the parser of `qemu-system-* -nic model=help` output (issue 22), which `vnet run --device` trusts
// to say which NIC models exist. NICModels.swift is the CLI's own file (a link to Sources/VNetCLI/NICModels.swift),
// so the code fuzzed is the code shipped. Every model it returns must be a bare device name, once, never pvrdma;
// every one resolves to itself; `virtio` resolves only when it or virtio-net-pci is listed.
import FuzzSupport

@_cdecl("FuzzNICModels_main")
public func fuzzNICModelsMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzNICModels)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNICModels(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size <= 1 << 16 else { return 0 }
    let text = String(decoding: UnsafeRawBufferPointer(start: data, count: size), as: UTF8.self)
    let models = NICModels.parseHelp(text)
    precondition(Set(models).count == models.count, "a model listed twice")
    for m in models {
        precondition(NICModels.isDeviceName(m), "not a device name: \(m)")
        precondition(!NICModels.excluded.contains(m), "an excluded model: \(m)")
        precondition(NICModels.resolve(m, offered: models) == m)
    }
    precondition((NICModels.resolve("virtio", offered: models) != nil)
                 == (models.contains("virtio") || models.contains("virtio-net-pci")))
    return 0
}
