"""The noise rule: when a benchmark comparison may be called a win, a loss, or only a tie.

Theory of operation. Every figure of vnet-bench is a handful of repetitions (usually 5) per backend, taken in
turn on a machine that other work shares. A claim such as "vnet >= 2x libslirp" or "vnet beats pasta" is
judged on the repetitions themselves, never on the medians alone:

- the ratio is median(vnet) / median(peer);
- a bootstrap 95% confidence interval of that ratio: each group is resampled with replacement, on its own,
  BOOTSTRAP_ROUNDS times, with a fixed seed (so the same figures always give the same verdict and the same
  table), and the interval is the 2.5th to 97.5th percentile of the resampled ratios of medians;
- higher is better (throughput, connections/s): the claim "ratio >= target" is a **win** when vnet's slowest
  repetition is above target x the peer's fastest, or when the whole interval is above the target. It is a
  **loss** when vnet's fastest is below target x the peer's slowest, or the whole interval is below the target.
  Anything else is a **tie**: the figures cannot tell the two apart at that target;
- lower is better (CPU per GB, round-trip time): the same with the directions swapped ("ratio <= target").
  A win needs vnet's highest repetition below target x the peer's lowest, or the whole interval below target;
- fewer than MIN_REPS repetitions on either side cannot show a spread: the verdict is "n/a".

Only the standard library is used (random with a fixed seed), so the suite's unit test needs nothing installed.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

BOOTSTRAP_ROUNDS = 4000
BOOTSTRAP_SEED = 19
CONFIDENCE = 0.95
MIN_REPS = 3

WIN, TIE, LOSS, NA = "win", "tie", "loss", "n/a"


@dataclass(frozen=True)
class Verdict:
    verdict: str  # WIN, TIE, LOSS or NA
    ratio: float | None  # median(vnet) / median(peer)
    ci_low: float | None  # bootstrap interval of that ratio
    ci_high: float | None
    reason: str  # which part of the rule decided it, in words

    def cell(self) -> str:
        """The table cell: ratio of the medians, its interval, the verdict."""
        if self.ratio is None:
            return "–"
        if self.ci_low is None:
            return f"{self.ratio:.2f}× {self.verdict}"
        return f"{self.ratio:.2f}× ({self.ci_low:.2f}–{self.ci_high:.2f}) {self.verdict}"


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def bootstrap_ratio_ci(a: list[float], b: list[float], rounds: int = BOOTSTRAP_ROUNDS,
                       seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of median(a) / median(b); each group resampled on its own."""
    rng = random.Random(seed)
    draw = rng.random
    na, nb = len(a), len(b)

    def median_of_resample(vals: list[float], n: int) -> float:
        s = sorted([vals[int(draw() * n)] for _ in range(n)])
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2

    ratios = []
    for _ in range(rounds):
        ma = median_of_resample(a, na)
        mb = median_of_resample(b, nb)
        if mb > 0:
            ratios.append(ma / mb)
    ratios.sort()
    tail = (1 - confidence) / 2
    return _percentile(ratios, tail), _percentile(ratios, 1 - tail)


def judge(vnet: list[float], peer: list[float], target: float = 1.0, higher_is_better: bool = True) -> Verdict:
    """The verdict on "median(vnet) / median(peer) is at least target" (higher is better) or "at most target"
    (lower is better), under the noise rule in the module's description."""
    vnet = [float(x) for x in vnet or []]
    peer = [float(x) for x in peer or []]
    if not vnet or not peer:
        return Verdict(NA, None, None, None, "a side has no figures")
    mp = statistics.median(peer)
    if mp <= 0 or min(peer) <= 0:
        return Verdict(NA, None, None, None, "the peer's figure is zero")
    ratio = statistics.median(vnet) / mp
    if len(vnet) < MIN_REPS or len(peer) < MIN_REPS:
        return Verdict(NA, ratio, None, None, f"fewer than {MIN_REPS} repetitions on a side")
    lo, hi = bootstrap_ratio_ci(vnet, peer)
    if higher_is_better:
        if min(vnet) > target * max(peer):
            return Verdict(WIN, ratio, lo, hi, "vnet's minimum is above target × the peer's maximum")
        if lo > target:
            return Verdict(WIN, ratio, lo, hi, "the bootstrap interval lies above the target")
        if max(vnet) < target * min(peer):
            return Verdict(LOSS, ratio, lo, hi, "vnet's maximum is below target × the peer's minimum")
        if hi < target:
            return Verdict(LOSS, ratio, lo, hi, "the bootstrap interval lies below the target")
    else:
        if max(vnet) < target * min(peer):
            return Verdict(WIN, ratio, lo, hi, "vnet's maximum is below target × the peer's minimum")
        if hi < target:
            return Verdict(WIN, ratio, lo, hi, "the bootstrap interval lies below the target")
        if min(vnet) > target * max(peer):
            return Verdict(LOSS, ratio, lo, hi, "vnet's minimum is above target × the peer's maximum")
        if lo > target:
            return Verdict(LOSS, ratio, lo, hi, "the bootstrap interval lies above the target")
    return Verdict(TIE, ratio, lo, hi, "the figures overlap the target: within the noise")
