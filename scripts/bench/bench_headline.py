"""The headline of a vnet-bench run: provenance, the like-for-like table and the targets, built from raw JSON.

Theory of operation. vnet-bench writes every repetition of a run to one JSON file (Benchmarks/raw/...). This
module turns such a file into the Markdown block that Benchmarks/RESULTS.md shows, and nothing else: the block is
a pure function of the JSON (the verdicts' bootstrap has a fixed seed), so tests/bench/test_results_table.py can
rebuild every block of RESULTS.md from the committed JSON and fail when a table was edited by hand.

The table leads with the like-for-like comparison: "vnet-off" is `vnet user --no-tap-offload`, which moves the
same frames as slirp4netns and pasta (at most one MTU per TAP read or write, checksums done by the guest
namespace's kernel). "vnet" is vnet's default, TAP offload on (virtio-net header, checksum offload and TSO: up
to 64 KiB per write), a feature users get but the peers do not have; it has its own columns. In the TCG rows
every backend moves plain frames over a stream (or inside QEMU), so vnet's only row there is like-for-like, and
the CPU compared is QEMU's plus the backend's (QEMU's -netdev user runs libslirp inside QEMU).

Every ratio is median ÷ median with its bootstrap 95% interval and the verdict of bench_verdicts.judge.
"""

from __future__ import annotations

import statistics

from bench_verdicts import Verdict, judge

# metric key -> (label, unit, higher is better, decimals)
METRICS = {
    "gbps": ("throughput", "Gbit/s", True, 2),
    "cpu_per_gb": ("backend CPU per GB", "CPU s/GB", False, 2),
    "total_cpu_per_gb": ("QEMU + backend CPU per GB", "CPU s/GB", False, 2),
    "p50": ("RTT p50", "µs", False, 1),
    "p99": ("RTT p99", "µs", False, 1),
    "rate": ("connections/s", "conn/s", True, 0),
}
# Which metrics each scenario shows in the headline.
HEADLINE_METRICS = {"bulk": ["gbps", "cpu_per_gb"], "latency": ["p50", "p99"], "connrate": ["rate"],
                    "qemu": ["gbps", "total_cpu_per_gb"]}
VNET_COLUMNS = [("vnet-off", "vnet, offload off (like-for-like)"), ("vnet", "vnet, offload on (default)")]
PEERS = [("slirp", "libslirp"), ("pasta", "pasta")]
# issue 4's targets: (case id, metric, target, wording)
TARGETS = [
    ("bulk-g2h-1500", "gbps", 2.5, "TCP guest→host, MTU 1500: ≥ 2.5× libslirp"),
    ("bulk-g2h-65520", "gbps", 2.0, "TCP guest→host, MTU 65520: ≥ 2× libslirp"),
    ("bulk-h2g-1500", "gbps", 2.0, "TCP host→guest, MTU 1500: ≥ 2× libslirp"),
    ("bulk-h2g-65520", "gbps", 2.0, "TCP host→guest, MTU 65520: ≥ 2× libslirp"),
    ("latency", "p50", 1.0, "RTT p50 ≤ libslirp's (so the latency added over loopback is too)"),
    ("latency", "p99", 1.0, "RTT p99 ≤ libslirp's (so the latency added over loopback is too)"),
    ("connrate", "rate", 1.0, "connection rate ≥ libslirp's"),
]


def scenario_of(case: dict) -> str:
    return case.get("scenario") or case["id"].split("-")[0]


def _vals(case: dict, backend: str, key: str) -> list[float]:
    return list(case.get("results", {}).get(backend, {}).get(key, []))


def _num(x: float, dec: int) -> str:
    if dec == 0 or abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{dec}f}"


def figure_cell(vals: list[float], dec: int) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return _num(vals[0], dec)
    return f"{_num(statistics.median(vals), dec)} ({_num(min(vals), dec)}–{_num(max(vals), dec)})"


def like_for_like_backend(case: dict) -> str:
    """The vnet row that moves the same frames as the peers: vnet-off on a TAP, plain vnet over a stream."""
    return "vnet" if scenario_of(case) == "qemu" else "vnet-off"


def verdict(case: dict, backend: str, peer: str, key: str, target: float = 1.0) -> Verdict:
    higher = METRICS[key][2]
    return judge(_vals(case, backend, key), _vals(case, peer, key), target, higher)


def provenance_lines(raw: dict, json_name: str) -> list[str]:
    p = raw.get("provenance", {})
    info = raw.get("info", {})
    m = p.get("machine", {})
    lines = [f"- raw figures, every repetition: [{json_name}]({json_name})"]
    if p:
        dirty = " **with uncommitted changes**" if p.get("dirty") else " (clean tree)"
        lines.append(f"- commit: `{p.get('commit')}`{dirty}; vnet built by the tool: `{p.get('build_command')}`")
        lines.append(f"- command: `{p.get('command_line')}`")
        if p.get("vnet_args"):
            lines.append(f"- **every vnet ran with `{' '.join(p['vnet_args'])}`** (both vnet columns)")
        lines += [
            f"- date: {p.get('started')} to {p.get('ended')}",
            f"- machine: {m.get('nproc')} CPUs, {m.get('cpu')}, {m.get('mem_gib')} GiB, Linux {m.get('kernel')}",
            "- load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in p.get("loadavg_start", []))
            + " at the start, " + ", ".join(f"{x:.2f}" for x in p.get("loadavg_end", [])) + " at the end",
            f"- other processes (not started by the tool) used {p.get('foreign_cpu_s', 0):.0f} CPU s in "
            f"{p.get('elapsed_s', 0):.0f} s, {p.get('foreign_share', 0) * 100:.0f}% of one CPU on average; "
            f"most: {p.get('foreign_top', 'none')}",
        ]
    else:
        lines.append(f"- commit: {raw.get('commit', '?')} (an older run: no provenance block)")
    if info:
        lines.append(f"- peers: slirp4netns {info.get('slirp4netns')} (libslirp {info.get('libslirp')}), "
                     f"pasta/passt {info.get('pasta')}, QEMU {info.get('qemu')}; iperf3 {info.get('iperf3')}, "
                     f"sockperf {info.get('sockperf')}")
    return lines


def has_peers(raw: dict) -> bool:
    """Whether the run has a headline: a headline scenario in which libslirp or pasta ran."""
    return any(p in c.get("results", {}) for c in raw.get("cases", []) if scenario_of(c) in HEADLINE_METRICS
               for p, _ in PEERS)


def headline_table(raw: dict) -> list[str]:
    cases = [c for c in raw.get("cases", []) if scenario_of(c) in HEADLINE_METRICS]
    present = {b for c in cases for b in c.get("results", {})}
    peers = [(p, lab) for p, lab in PEERS if p in present]
    has_loop = "loopback" in present
    hdr = (["scenario", "metric"] + (["loopback"] if has_loop else []) + [lab for _, lab in VNET_COLUMNS]
           + [lab for _, lab in peers] + [f"like-for-like ÷ {lab}" for _, lab in peers]
           + [f"offload on ÷ {lab}" for _, lab in peers])
    out = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for c in cases:
        sc = scenario_of(c)
        for key in HEADLINE_METRICS[sc]:
            label, unit, _, dec = METRICS[key]
            if not any(_vals(c, b, key) for b in c.get("results", {})):
                continue
            lfl = like_for_like_backend(c)
            row = [c["title"], f"{label} ({unit})"]
            if has_loop:
                row.append(figure_cell(_vals(c, "loopback", key), dec) if "loopback" in c.get("results", {}) else "")
            row.append(figure_cell(_vals(c, lfl, key), dec))
            row.append("(stream: no TAP)" if sc == "qemu" else figure_cell(_vals(c, "vnet", key), dec))
            row += [("n/a: " + c["na"][p]) if p in c.get("na", {}) else figure_cell(_vals(c, p, key), dec)
                    for p, _ in peers]
            row += [verdict(c, lfl, p, key).cell() for p, _ in peers]
            row += ["" if sc == "qemu" else verdict(c, "vnet", p, key).cell() for p, _ in peers]
            out.append("| " + " | ".join(row) + " |")
    return out


def targets_table(raw: dict) -> list[str]:
    by = {c["id"]: c for c in raw.get("cases", [])}
    out = ["| target (issue 4) | like-for-like (vnet, offload off) | offload on (default) |", "|---|---|---|"]
    for cid, key, target, wording in TARGETS:
        c = by.get(cid)
        if not c or not _vals(c, "slirp", key):
            continue
        cells = [verdict(c, b, "slirp", key, target).cell() if _vals(c, b, key) else "–" for b in ("vnet-off", "vnet")]
        out.append(f"| {wording} | {cells[0]} | {cells[1]} |")
    c = by.get("qemu-1500")
    if c and _vals(c, "pasta", "gbps"):
        out.append(f"| TCG guest over a stream, MTU 1500: ≥ passt | {verdict(c, 'vnet', 'pasta', 'gbps').cell()} "
                   "| (no TAP: as like-for-like) |")
    tally = {}
    for c in raw.get("cases", []):
        sc = scenario_of(c)
        if sc not in HEADLINE_METRICS:
            continue
        for key in HEADLINE_METRICS[sc]:
            for b in ("vnet-off", "vnet"):
                if sc == "qemu" and b == "vnet":
                    continue  # no TAP: vnet's one row there is counted as like-for-like
                v = verdict(c, like_for_like_backend(c) if b == "vnet-off" else b, "pasta", key)
                if v.ratio is not None:
                    tally.setdefault(b, {}).setdefault(v.verdict, []).append(f"{c['title']} {METRICS[key][0]}")
    if tally:
        def summary(b):
            t = tally.get(b, {})
            return ", ".join(f"{k} {len(t[k])}" for k in ("win", "tie", "loss", "n/a") if t.get(k))
        out.append(f"| every headline figure against pasta/passt (throughput, CPU per GB, RTT, connections/s): "
                   f"count of verdicts | {summary('vnet-off')} | {summary('vnet')} |")
    return out


LEGEND = ("Cells: median (min–max) of the repetitions. Ratios: vnet's median ÷ the peer's median, then the "
          "bootstrap 95% interval of that ratio, then the verdict under the noise rule (Benchmarks/README.md, "
          "\"Verdicts\"): **win** only when vnet's worst repetition beats the peer's best, or the whole interval "
          "is on vnet's side of the target; **loss** the same the other way; otherwise **tie**. For CPU per GB "
          "and RTT lower is better, so a ratio below 1 is vnet's win. \"like-for-like\" is vnet with "
          "`--no-tap-offload` (the same frames as the peers); \"offload on\" is vnet's default (TSO and checksum "
          "offload on its TAP, which the peers do not use). TCG rows: libslirp is QEMU's `-netdev user`, pasta "
          "is passt over the same unix stream as vnet; no TAP, so vnet's row is like-for-like, and the CPU is "
          "QEMU's plus the backend's.")


def headline_markdown(raw: dict, json_name: str) -> str:
    """The whole block RESULTS.md carries for one run (between its markers)."""
    lines = provenance_lines(raw, json_name) + ["", LEGEND, ""] + headline_table(raw) + [""] + targets_table(raw)
    return "\n".join(lines) + "\n"


BLOCK_BEGIN = "<!-- headline: {name} (generated by scripts/bench/vnet-bench --render; do not edit) -->"
BLOCK_END = "<!-- /headline -->"


def block(raw: dict, json_name: str) -> str:
    return BLOCK_BEGIN.format(name=json_name) + "\n" + headline_markdown(raw, json_name) + BLOCK_END + "\n"


def stale_blocks(results_md: str, benchmarks_dir) -> tuple[int, list[str]]:
    """Rebuilds every generated block of RESULTS.md from the JSON it names. Returns how many blocks there are and
    a description of each one that differs from what its JSON gives (a hand-edited or stale table)."""
    from pathlib import Path
    import json
    import re
    rx = re.compile(r"<!-- headline: (\S+) \(generated by scripts/bench/vnet-bench --render; do not edit\) -->\n"
                    r"(.*?)" + re.escape(BLOCK_END), re.S)
    found, bad = 0, []
    for m in rx.finditer(results_md):
        found += 1
        name, body = m.group(1), m.group(2)
        path = Path(benchmarks_dir) / name
        if not path.is_file():
            bad.append(f"{name}: the JSON is not in the repository")
            continue
        want = headline_markdown(json.loads(path.read_text()), name)
        if body != want:
            have_lines, want_lines = body.splitlines(), want.splitlines()
            diff = next((f"line {i + 1}: RESULTS.md has {h!r}, the JSON gives {w!r}"
                         for i, (h, w) in enumerate(zip(have_lines, want_lines)) if h != w),
                        f"{len(have_lines)} lines in RESULTS.md, {len(want_lines)} from the JSON")
            bad.append(f"{name}: {diff}")
    return found, bad
