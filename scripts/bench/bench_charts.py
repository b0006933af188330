"""SVG charts of a vnet-bench run's headline figures, drawn with matplotlib from the raw JSON.

Theory of operation. Four charts, each with vnet (like-for-like and offload on) next to every peer that ran,
each bar the median of the repetitions with a whisker from the slowest to the fastest repetition (so the
spread the verdicts are judged on is visible): throughput per scenario, round-trip p50 and p99 (with the
loopback floor), connections per second, and CPU seconds per GB per scenario (log scale: the backends differ
by more than 10x). The files are deterministic for the same JSON (fixed SVG ids, no date), so a re-render
that changes nothing leaves git clean. matplotlib is Debian's python3-matplotlib; only vnet-bench needs it,
the test suite does not.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench_headline import scenario_of

SERIES = [("vnet-off", "vnet, offload off (like-for-like)", "#1f5fa8"),
          ("vnet", "vnet, offload on (default)", "#7fb2e5"),
          ("slirp", "libslirp", "#d9822b"),
          ("pasta", "pasta / passt", "#3a9a4a"),
          ("loopback", "loopback (floor)", "#9a9a9a")]


def _short(title: str) -> str:
    return (title.replace("TCP ", "").replace(" (port forward)", "").replace("TCG guest iperf3 →host", "TCG guest→host")
            .replace(", MTU ", "\nMTU "))


def _grouped(ax, groups: list[str], series: list[tuple[str, str, str]], values, ylabel: str, log: bool = False):
    """values(group_index, backend) -> list of repetitions (or []); one bar per backend per group."""
    shown = [s for s in series if any(values(i, s[0]) for i in range(len(groups)))]
    width = 0.8 / max(len(shown), 1)
    for k, (b, label, color) in enumerate(shown):
        xs, meds, lo, hi = [], [], [], []
        for i in range(len(groups)):
            v = values(i, b)
            if not v:
                continue
            m = statistics.median(v)
            xs.append(i - 0.4 + width * (k + 0.5))
            meds.append(m)
            lo.append(m - min(v))
            hi.append(max(v) - m)
        ax.bar(xs, meds, width * 0.92, label=label, color=color, yerr=[lo, hi], capsize=3,
               error_kw={"elinewidth": 1, "ecolor": "#222222"})
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def draw(raw: dict, outdir: Path, subtitle: str) -> list[Path]:
    import matplotlib
    matplotlib.use("svg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "vnet-bench"
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files, no glyph paths
    outdir.mkdir(parents=True, exist_ok=True)
    cases = raw.get("cases", [])
    written = []

    def vals(case, b, key):
        res = case.get("results", {})
        if scenario_of(case) == "qemu":  # no TAP: vnet's one row there is the like-for-like one
            b = {"vnet-off": "vnet", "vnet": None}.get(b, b)
        return list(res.get(b, {}).get(key, [])) if b else []

    def save(fig, name):
        path = outdir / name
        fig.tight_layout()
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        written.append(path)

    tput = [c for c in cases if scenario_of(c) in ("bulk", "qemu")]
    if tput:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        _grouped(ax, [_short(c["title"]) for c in tput], SERIES[:4],
                 lambda i, b: vals(tput[i], b, "gbps"), "Gbit/s (median; whiskers: min–max)")
        ax.set_title(f"TCP throughput, one iperf3 stream — {subtitle}", fontsize=10)
        save(fig, "throughput.svg")
        fig, ax = plt.subplots(figsize=(10, 4.5))
        _grouped(ax, [_short(c["title"]) for c in tput], SERIES[:4],
                 lambda i, b: vals(tput[i], b, "total_cpu_per_gb" if scenario_of(tput[i]) == "qemu" else "cpu_per_gb"),
                 "CPU s per GB moved (log; lower is better)", log=True)
        ax.set_title(f"CPU per GB: the backend's (TCG: QEMU + backend) — {subtitle}", fontsize=10)
        save(fig, "cpu-per-gb.svg")
    lat = next((c for c in cases if scenario_of(c) == "latency"), None)
    if lat:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        for ax, key in zip(axes, ("p50", "p99")):  # side by side: the p99 scale would flatten the p50 bars
            _grouped(ax, [f"RTT {key}"], SERIES, lambda i, b, k=key: vals(lat, b, k),
                     "µs (median; whiskers: min–max; lower is better)")
        fig.suptitle(f"TCP ping-pong round trip (sockperf) — {subtitle}", fontsize=10)
        save(fig, "latency.svg")
    conn = next((c for c in cases if scenario_of(c) == "connrate"), None)
    if conn:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        _grouped(ax, ["connect, 1 byte each way, close"], SERIES, lambda i, b: vals(conn, b, "rate"),
                 "connections/s (median; whiskers: min–max)")
        ax.set_title(f"Connection rate — {subtitle}", fontsize=10)
        save(fig, "connrate.svg")
    return written
