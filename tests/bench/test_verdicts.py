"""The noise rule of scripts/bench/bench_verdicts.py: a "≥" or "beats" verdict is a win only beyond the noise.

Each case is a small set of repetitions built so that exactly one part of the rule decides it: the ranges (vnet's
worst beyond the peer's best), the bootstrap interval, or neither (a tie). Fast: no benchmark runs here.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))

from bench_verdicts import LOSS, NA, TIE, WIN, bootstrap_ratio_ci, judge  # noqa: E402


def test_separated_ranges_are_a_win():
    v = judge([10, 11, 12, 10.5, 11.5], [4, 5, 4.5, 5.2, 4.8])
    assert v.verdict == WIN and "minimum is above" in v.reason
    assert 2.2 < v.ratio < 2.4


def test_a_target_multiplies_the_peers_maximum():
    # Medians 2.57x apart, but vnet's slowest (9.0) is not 2.5x the peer's fastest (4.0): not a win at 2.5x.
    v = judge([9.0, 9.5, 10, 9.8, 9.2], [3.5, 3.9, 4.0, 3.7, 3.3], target=2.5)
    assert v.ratio > 2.5
    assert v.verdict == TIE
    # The same figures clear 2x on the ranges.
    assert judge([9.0, 9.5, 10, 9.8, 9.2], [3.5, 3.9, 4.0, 3.7, 3.3], target=2.0).verdict == WIN


def test_the_bootstrap_interval_can_decide_when_one_outlier_spoils_the_ranges():
    vnet = [10, 10.2, 10.1, 10.3, 10.25, 10.15, 6.0]
    peer = [8, 8.1, 8.2, 7.9, 8.05, 7.95, 10.5]
    assert min(vnet) < max(peer)  # the ranges overlap
    v = judge(vnet, peer)
    assert v.verdict == WIN and "interval" in v.reason
    assert v.ci_low > 1.0


def test_overlapping_figures_are_a_tie_not_a_pass():
    # The review's case: 0.48 against 0.47 Gbit/s with overlapping ranges was called a PASS.
    v = judge([0.44, 0.48, 0.50, 0.47, 0.49], [0.45, 0.47, 0.49, 0.46, 0.48])
    assert v.ratio > 1.0
    assert v.verdict == TIE
    assert v.ci_low < 1.0 < v.ci_high


def test_peer_beyond_the_noise_is_a_loss():
    v = judge([1, 1.1, 1.2, 1.05, 1.15], [2, 2.1, 2.2, 2.05, 2.15])
    assert v.verdict == LOSS


def test_lower_is_better_mirrors_the_rule():
    cpu_vnet, cpu_peer = [0.5, 0.55, 0.52, 0.6, 0.51], [1.5, 1.6, 1.7, 1.8, 1.55]
    assert judge(cpu_vnet, cpu_peer, higher_is_better=False).verdict == WIN
    assert judge(cpu_peer, cpu_vnet, higher_is_better=False).verdict == LOSS
    # p99 RTT: vnet's median is higher, but the spreads overlap: a tie, not a loss.
    assert judge([120, 96, 688, 118, 125], [113, 110, 213, 112, 115], higher_is_better=False).verdict == TIE


def test_too_few_repetitions_give_no_verdict():
    v = judge([10, 11], [1, 2])
    assert v.verdict == NA and v.ratio is not None
    assert judge([], [1, 2, 3]).verdict == NA


def test_the_bootstrap_is_seeded():
    a, b = [3.1, 2.9, 3.4, 3.0, 2.7], [2.8, 3.3, 2.6, 3.0, 2.9]
    assert bootstrap_ratio_ci(a, b) == bootstrap_ratio_ci(a, b)
    assert judge(a, b).cell() == judge(a, b).cell()
