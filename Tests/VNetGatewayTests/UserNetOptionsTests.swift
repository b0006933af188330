// `-netdev user` option strings: QemuOpts splitting, derived addresses, and every refusal naming its option.

import Testing
@testable import VNetGateway
import VNetServices
import VNetWire

/// The error message parse() throws for `text`, or nil when it parses.
func parseError(_ text: String) -> String? {
    do {
        _ = try UserNetOptions.parse(text)
        return nil
    } catch {
        return error.message
    }
}

@Suite("UserNetOptions")
struct UserNetOptionsTests {
    @Test("net= derives host .2, dns .3 and dhcpstart .15")
    func derivedAddresses() throws {
        let c = try UserNetOptions.parse("user,id=n0,net=10.0.3.0/24")
        #expect(c.id == "n0")
        #expect(c.network == IPv4Network(address: IPv4Address(10, 0, 3, 0), prefixLength: 24))
        #expect(c.gatewayAddress == IPv4Address(10, 0, 3, 2))
        #expect(c.dnsAddress == IPv4Address(10, 0, 3, 3))
        #expect(c.dhcpStart == IPv4Address(10, 0, 3, 15))
        #expect(c.gatewayMAC == MACAddress(0x52, 0x55, 0x0A, 0x00, 0x03, 0x02))
    }

    @Test("an empty string gives QEMU's defaults")
    func defaults() throws {
        let c = try UserNetOptions.parse("")
        #expect(c.network.description == "10.0.2.0/24")
        #expect(c.gatewayAddress == gatewayIP && c.dnsAddress == dnsIP && c.dhcpStart == guestIP)
        #expect(c.mtu == 1500 && c.mapGatewayToHostLoopback)
        #expect(try UserNetOptions.parse("user").network.description == "10.0.2.0/24")
    }

    @Test("a dotted netmask is accepted")
    func dottedMask() throws {
        #expect(try UserNetOptions.parse("net=10.0.2.0/255.255.255.0").network.prefixLength == 24)
        #expect(try UserNetOptions.parse("net=10.9.0.0/255.255.0.0").network.prefixLength == 16)
    }

    @Test("net= without a mask takes the classful default",
          arguments: [("10.0.0.0", 8), ("172.16.0.0", 12), ("128.1.0.0", 16), ("192.168.0.0", 16)])
    func classful(address: String, prefix: Int) throws {
        let c = try UserNetOptions.parse("net=\(address)")
        #expect(c.network.prefixLength == prefix)
        #expect(c.gatewayAddress.rawValue == c.network.address.rawValue | 2)
    }

    @Test("explicit host, dns and dhcpstart override the derived ones")
    func explicitAddresses() throws {
        let c = try UserNetOptions.parse("net=192.168.76.0/24,host=192.168.76.1,dns=192.168.76.53,dhcpstart=192.168.76.100")
        #expect(c.gatewayAddress == IPv4Address(192, 168, 76, 1))
        #expect(c.dnsAddress == IPv4Address(192, 168, 76, 53))
        #expect(c.dhcpStart == IPv4Address(192, 168, 76, 100))
    }

    @Test("split honours ',,' as an escaped comma")
    func escapedComma() throws {
        let pairs = try UserNetOptions.split("user,hostname=a,,b,dnssearch=x.example,,,id=n,,1,,")
        #expect(pairs.map(\.0) == ["hostname", "dnssearch", "id"])
        #expect(pairs.map(\.1) == ["a,b", "x.example,", "n,1,"])
        #expect(try UserNetOptions.split("id=a,").map(\.1) == ["a"])   // one trailing comma is ignored
    }

    @Test("split refuses empty items and items without a value")
    func splitErrors() {
        #expect(throws: UserNetOptionError.self) { try UserNetOptions.split(",id=a") }
        #expect(parseError(",id=a")?.contains("empty") == true)
        #expect(parseError("id=a,,,net")?.contains("needs a value") == true)
        #expect(parseError("restrict")?.contains("needs a value") == true)
    }

    @Test("domain name, host name and repeated dnssearch are kept")
    func names() throws {
        let c = try UserNetOptions.parse("domainname=vnet.test,hostname=guest1,dnssearch=a.example,dnssearch=b.example")
        #expect(c.domainName == "vnet.test" && c.hostName == "guest1")
        #expect(c.dnsSearch == ["a.example", "b.example"])
    }

    @Test("off-switches that match what vnet does are accepted")
    func acceptedSwitches() throws {
        _ = try UserNetOptions.parse("restrict=off,ipv6=off,ipv4=on")
        _ = try UserNetOptions.parse("ipv6=on,ipv6-net=fd00:1::/64,ipv6-host=fd00:1::2,ipv6-dns=fd00:1::3")
        _ = try UserNetOptions.parse("restrict=no,ipv6=no")
    }

    @Test("options vnet does not implement yet are refused by name",
          arguments: ["smb=/tmp", "ipv4=off"])
    func notYetSupported(option: String) throws {
        let key = String(option.split(separator: "=")[0])
        let message = try #require(parseError("user,id=n0,\(option)"))
        #expect(message.contains(key), "\(message)")
        #expect(message.contains("not supported"), "\(message)")
    }

    @Test("restrict=on|yes turns isolation on; off|no leaves it off")
    func restrict() throws {
        #expect(try UserNetOptions.parse("restrict=on").restricted)
        #expect(try UserNetOptions.parse("restrict=yes").restricted)
        #expect(try !UserNetOptions.parse("restrict=off").restricted)
        #expect(try !UserNetOptions.parse("").restricted)
    }

    @Test("hostfwd in QEMU syntax, repeatable; an empty guest address is the first DHCP address")
    func hostForwards() throws {
        let c = try UserNetOptions.parse("hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.20:53,hostfwd=:10.0.0.1:80-:8080")
        #expect(c.hostForwards == [
            HostForward(proto: .tcp, hostAddress: .any, hostPort: 2222, guestAddress: IPv4Address(10, 0, 2, 15), guestPort: 22),
            HostForward(proto: .udp, hostAddress: .loopback, hostPort: 5353, guestAddress: IPv4Address(10, 0, 2, 20), guestPort: 53),
            HostForward(proto: .tcp, hostAddress: IPv4Address(10, 0, 0, 1), hostPort: 80, guestAddress: IPv4Address(10, 0, 2, 15), guestPort: 8080),
        ])
        // The default guest address follows dhcpstart, wherever it appears in the string.
        let d = try UserNetOptions.parse("hostfwd=tcp::1-:2,dhcpstart=10.0.2.40")
        #expect(d.hostForwards.first?.guestAddress == IPAddress(IPv4Address(10, 0, 2, 40)))
    }

    @Test("guestfwd in QEMU syntax with tcp: and cmd: devices; ',,' keeps a comma in the command")
    func guestForwards() throws {
        let c = try UserNetOptions.parse("guestfwd=tcp:10.0.2.100:1234-tcp:127.0.0.1:4321,guestfwd=:10.0.2.101:7-cmd:echo a,,b")
        #expect(c.guestForwards == [
            GuestForward(serverAddress: IPv4Address(10, 0, 2, 100), serverPort: 1234, target: .tcp(.loopback, 4321)),
            GuestForward(serverAddress: IPv4Address(10, 0, 2, 101), serverPort: 7, target: .command("echo a,b")),
        ])
        #expect(c.isVirtualAddress(IPv4Address(10, 0, 2, 100)))
        #expect(!c.isVirtualAddress(IPv4Address(10, 0, 2, 102)))
    }

    @Test("malformed forwards are refused with the option's name",
          arguments: ["hostfwd=tcp::2222", "hostfwd=sctp::1-:2", "hostfwd=tcp::99999-:22", "hostfwd=tcp::1-:0",
                      "hostfwd=tcp::1-10.0.3.5:22", "hostfwd=tcp:1.2.3:1-:2", "guestfwd=tcp:10.0.2.100:1234",
                      "guestfwd=tcp:10.0.2.100:1234-file:/x", "guestfwd=udp:10.0.2.100:1-cmd:x", "guestfwd=tcp:10.0.2.20:1-cmd:x",
                      "guestfwd=tcp:10.0.2.100:1-cmd:", "guestfwd=tcp:10.0.2.100:1-tcp:127.0.0.1",
                      "guestfwd=tcp:10.0.2.100:1-cmd:a,guestfwd=tcp:10.0.2.100:1-cmd:b"])
    func badForwards(option: String) throws {
        let key = String(option.split(separator: "=")[0])
        let message = try #require(parseError(option))
        #expect(message.contains("'\(key)'"), "\(message)")
    }

    @Test("an unknown key is refused as unknown")
    func unknownKey() {
        #expect(parseError("user,frobnicate=1") == "unknown option 'frobnicate'")
    }

    @Test("a key given twice is refused", arguments: ["net=10.0.3.0/24,net=10.0.4.0/24", "id=a,id=b", "hostname=a,hostname=a"])
    func duplicate(text: String) throws {
        #expect(try #require(parseError(text)).contains("twice"))
    }

    @Test("inconsistent or malformed addresses are refused", arguments: [
        ("net=10.0.3.0/24,host=10.0.4.2", "host"),
        ("host=10.0.2.0", "host"),
        ("host=10.0.2.255", "host"),
        ("dns=10.0.3.3", "dns"),
        ("host=10.0.2.3", "must differ"),
        ("host=10.0.2.20", "overlaps"),
        ("dns=10.0.2.30", "overlaps"),
        ("dhcpstart=10.0.2.250", "dhcpstart"),
        ("host=10.0.2.256", "not an IPv4 address"),
        ("dns=abc", "not an IPv4 address"),
        ("dhcpstart=10.0.2", "not an IPv4 address"),
        ("net=10.0.2.0/33", "net"),
        ("net=10.0.2.0/31", "no room"),
        ("net=10.0.2.0/255.0.255.0", "bad netmask"),
        ("net=10.0.2.0/x", "bad netmask"),
        ("net=10.0.2.0/+24", "bad netmask"),
        ("restrict=maybe", "on or off"),
        ("dnssearch=a..b", "dnssearch"),
        ("domainname=.", "domainname"),
        ("hostname=", "hostname"),
    ])
    func invalid(text: String, expected: String) throws {
        let message = try #require(parseError(text), "\(text) was accepted")
        #expect(message.contains(expected), "\(text): \(message)")
    }

    @Test("parse builds on a base configuration")
    func base() throws {
        var b = GatewayConfig()
        b.mtu = 9000
        b.mapGatewayToHostLoopback = false
        let c = try UserNetOptions.parse("id=x", into: b)
        #expect(c.mtu == 9000 && !c.mapGatewayToHostLoopback && c.id == "x")
    }
}

@Suite("UserNetOptions TFTP")
struct UserNetOptionsTFTPTests {
    @Test("tftp=, bootfile= and tftp-server-name= are kept; ',,' escapes a comma in the directory")
    func tftpOptions() throws {
        let c = try UserNetOptions.parse("user,tftp=/srv/a,,b,bootfile=boot.ipxe,tftp-server-name=10.0.2.2")
        #expect(c.tftpRoot == "/srv/a,b")
        #expect(c.bootfile == "boot.ipxe")
        #expect(c.tftpServerName == "10.0.2.2")
        #expect(try UserNetOptions.parse("").tftpRoot == nil)
    }

    @Test("empty or oversized values are refused", arguments: ["tftp=", "bootfile=", "tftp-server-name=",
                                                               "bootfile=" + String(repeating: "b", count: 128)])
    func bad(option: String) {
        #expect(throws: UserNetOptionError.self) { try UserNetOptions.parse(option) }
    }
}
