// Unit tests of NICModels: parsing `qemu-system-x86_64 -nic model=help` as Debian's QEMU 7.2 prints it (noise lines
// included), the `virtio` alias and the MTU table. (--mac uses VNetWire's MACAddress parser.)

import Testing
@testable import VNetCLI

/// Captured from Debian's qemu-system-x86 1:7.2+dfsg-7+deb12u18 (stdout and stderr together), as is.
let qemu72Help = """
qemu: module ui-ui-gtk not found, do you want to install qemu-system-gui package?
qemu: module ui-ui-sdl not found, do you want to install qemu-system-gui package?
Supported NIC models:
e1000
e1000-82544gc
e1000-82545em
e1000e
i82550
i82551
i82557a
i82557b
i82557c
i82558a
i82558b
i82559a
i82559b
i82559c
i82559er
i82562
i82801
ne2k_pci
pcnet
pvrdma
rtl8139
tulip
virtio-net-pci
virtio-net-pci-non-transitional
virtio-net-pci-transitional
vmxnet3

"""

@Test func parsesQEMU72ListWithoutNoiseOrPVRDMA() {
    let models = NICModels.parseHelp(qemu72Help)
    #expect(models.count == 25)
    #expect(models.first == "e1000" && models.last == "vmxnet3")
    #expect(!models.contains("pvrdma"))
    #expect(!models.contains { $0.contains(" ") || $0.hasPrefix("qemu") })
    for guide in ["ne2k_pci", "i82551", "i82557b", "i82559er", "rtl8139", "e1000", "pcnet", "e1000e", "vmxnet3", "tulip"] {
        #expect(models.contains(guide), "\(guide)")
    }
}

@Test func noiseAfterTheHeaderAndCRLFAreSkipped() {
    let text = "Supported NIC models:\r\ne1000\r\nqemu: module ui-ui-gtk not found, do you want to install qemu-system-gui package?\r\nrtl8139\r\n"
    #expect(NICModels.parseHelp(text) == ["e1000", "rtl8139"])
}

@Test func nothingBeforeTheHeaderCounts() {
    #expect(NICModels.parseHelp("e1000\nrtl8139\n").isEmpty)
    #expect(NICModels.parseHelp("").isEmpty)
    #expect(NICModels.parseHelp("Supported NIC models:\n-bad\nx y\n\(String(repeating: "a", count: 65))\n").isEmpty)
}

@Test func virtioIsAnAliasAndUnknownModelsAreRefused() {
    let models = NICModels.parseHelp(qemu72Help)
    #expect(NICModels.resolve("virtio", offered: models) == "virtio-net-pci")
    #expect(NICModels.resolve("e1000", offered: models) == "e1000")
    #expect(NICModels.resolve("pvrdma", offered: models) == nil)
    #expect(NICModels.resolve("e1000x", offered: models) == nil)
    #expect(NICModels.resolve("virtio", offered: ["e1000"]) == nil)
    // A device QEMU itself calls `virtio` would be taken as listed (FuzzNICModels found the case).
    #expect(NICModels.resolve("virtio", offered: ["virtio"]) == "virtio")
    #expect(NICModels.isVirtio("virtio-net-pci-transitional") && !NICModels.isVirtio("e1000"))
}

@Test func smallFrameModelsHaveAnMTULimit() {
    for model in ["ne2k_pci", "pcnet", "rtl8139", "i82551", "i82557b", "i82559er", "i82550", "i82562", "i82801"] {
        #expect(NICModels.maximumMTU(model) == 1500, "\(model)")
    }
    for model in ["e1000", "e1000e", "virtio-net-pci", "vmxnet3"] {
        #expect(NICModels.maximumMTU(model) == nil, "\(model)")
    }
}
