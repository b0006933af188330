// Which QEMU gets `vectors=0` with vhost-user: only one before 8.0 running without KVM (the MSI-X crash under
// TCG), read from `qemu-system-* --version`.

import Foundation
import Testing
import VNetRuntime

@Suite("vhost-user: the QEMU in use")
struct VhostUserQEMUTests {
    @Test("versions read from --version's first line; anything else is unknown")
    func parse() {
        #expect(VhostUserQEMU.parseVersion("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)")! == (7, 2))
        #expect(VhostUserQEMU.parseVersion("QEMU emulator version 8.0.0")! == (8, 0))
        #expect(VhostUserQEMU.parseVersion("QEMU emulator version 10.1.2 (v10.1.2)")! == (10, 1))
        #expect(VhostUserQEMU.parseVersion("QEMU emulator version 9") == nil)
        #expect(VhostUserQEMU.parseVersion("bash: qemu: command not found") == nil)
        #expect(VhostUserQEMU.parseVersion("") == nil)
    }

    @Test("vectors=0 only without KVM on QEMU before 8.0, or on a QEMU whose version is unknown")
    func needsNoMSIX() {
        #expect(VhostUserQEMU.needsNoMSIX(kvm: false, version: (7, 2)))
        #expect(VhostUserQEMU.needsNoMSIX(kvm: false, version: nil))
        #expect(!VhostUserQEMU.needsNoMSIX(kvm: false, version: (8, 0)))
        #expect(!VhostUserQEMU.needsNoMSIX(kvm: false, version: (10, 1)))
        #expect(!VhostUserQEMU.needsNoMSIX(kvm: true, version: (7, 2)))
        #expect(!VhostUserQEMU.needsNoMSIX(kvm: true, version: nil))
    }

    @Test("the version a binary prints for --version; nil for one that cannot run or prints none")
    func probe() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vnet-qemu-probe-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // A stand-in QEMU (its path has a quote, as a path may): prints what QEMU 8.1 prints, only for --version.
        let fake = dir.appendingPathComponent("qemu's-system")
        try "#!/bin/sh\n[ \"$1\" = --version ] && printf 'QEMU emulator version 8.1.3\\nCopyright\\n'\n"
            .write(to: fake, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: fake.path)
        #expect(VhostUserQEMU.version(of: fake.path).map { [$0.major, $0.minor] } == [8, 1])
        #expect(VhostUserQEMU.version(of: dir.appendingPathComponent("missing").path) == nil)
        #expect(VhostUserQEMU.version(of: "true") == nil)
    }
}
