"""A DHCPDISCOVER storm from hundreds of made-up MACs runs through a real QEMU guest's whole DHCP exchange.

`vnet user`: the storm comes in on the guest's own link (a relay between QEMU and vnet's socket slips the
DISCOVERs in between the guest's frames), with a 16-address pool that the storm alone would fill many times
over. `vnet nat`: the storm is a switch port of its own and a real VM on another port asks for its lease; the
storm's port never holds more than 8 unconfirmed offers. In both, the guest gets its lease from udhcpc's normal
retries (5 DISCOVERs, 2 s apart), while the storm goes on and is answered.
"""

from __future__ import annotations

import time
from pathlib import Path

import rig
from dhcpstorm import StormPort, StormProxy

STORM_MACS = 200


def dhcp_under_storm(guest, storm, pool: int):
    # Let the storm fill the pool first: every address offered to a made-up MAC at least once.
    # Let the storm reach full force first: every made-up MAC has asked twice and the pool was offered whole.
    rig.wait_for(lambda: (storm.check(), storm.sent >= 2 * storm.macs and len(storm.offers) >= pool)[1], timeout=60,
                 message=f"the storm to send {2 * storm.macs} DISCOVERs and be offered {pool} addresses")
    before = storm.offer_count()
    start = time.monotonic()
    lease = guest.dhcp(timeout=60)   # udhcpc -t 5 -T 2: fails without a lease in its normal retries
    took = time.monotonic() - start
    after = storm.offer_count()
    storm.check()
    # The storm was running and being answered during the whole exchange.
    assert after - before >= 20, (before, after)
    return lease, took


def test_vnet_user_guest_gets_its_lease_through_a_storm(guest_image, workdir, log_dir):
    d = Path(workdir)
    sock = d / "vnet.sock"
    with rig.VnetProcess(["user", "--socket", sock], log_dir=log_dir) as vnet, \
            StormProxy(sock, d / "proxy.sock", macs=STORM_MACS) as proxy:
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={proxy.path}"]
        with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="guest") as g:
            proxy.start_storm()
            lease, took = dhcp_under_storm(g, proxy, pool=16)
            print(f"vnet user: lease {lease['ip']} in {took:.1f} s under a storm of {proxy.sent} DISCOVERs "
                  f"from {STORM_MACS} MACs ({proxy.offer_count()} offers to them)")
            assert lease["ip"].startswith("10.0.2.") and lease["router"] == "10.0.2.2", lease
            # The lease is bound: the storm's next offers never name it.
            seen = dict(proxy.offers)
            rig.wait_for(lambda: proxy.offer_count() >= sum(seen.values()) + 50, timeout=20, message="more storm offers")
            proxy.stop_storm()
            assert g.check("ping -c 1 -W 5 10.0.2.2 >/dev/null && echo reachable").strip() == "reachable"
            late = {a: n - seen.get(a, 0) for a, n in proxy.offers.items() if n > seen.get(a, 0)}
            assert lease["ip"] not in late, late
            assert proxy.acks == 0
            c = rig.read_counters(vnet)
            assert c.get("dhcp_replies", 0) >= proxy.offer_count(), c


def test_vnet_nat_storm_on_one_port_leaves_another_port_alone(guest_image, workdir, log_dir):
    d = Path(workdir)
    sock = d / "nat.sock"
    # 12 addresses: without a per-port cap the storm would hold all of them.
    args = ["nat", "--socket", sock, "--dhcp-range", "192.168.122.10-192.168.122.21", "--log-level", "info"]
    with rig.VnetProcess(args, log_dir=log_dir) as vnet, StormPort(sock, macs=STORM_MACS) as storm:
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="vm1", mac="52:54:00:12:01:01") as g:
            lease, took = dhcp_under_storm(g, storm, pool=8)
            print(f"vnet nat: vm1 lease {lease['ip']} in {took:.1f} s beside a storm port ({storm.sent} DISCOVERs, "
                  f"{storm.offer_count()} offers over {len(storm.offers)} addresses)")
            assert lease["ip"].startswith("192.168.122.") and lease["router"] == "192.168.122.1", lease
            # The storm's port held at most 8 unconfirmed offers: it only ever saw 8 addresses, never vm1's.
            assert len(storm.offers) == 8, storm.offers
            assert lease["ip"] not in storm.offers, (lease, storm.offers)
            assert g.check("ping -c 1 -W 5 192.168.122.1 >/dev/null && echo reachable").strip() == "reachable"
            # A second exchange (renewal from scratch) while the storm still runs: the same address again.
            again = g.dhcp(timeout=60)
            assert again["ip"] == lease["ip"], (lease, again)
            storm.check()
