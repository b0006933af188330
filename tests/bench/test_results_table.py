"""Benchmarks/RESULTS.md's headline tables are what the committed raw JSON gives, not hand-written figures.

vnet-bench writes every repetition of a run to Benchmarks/raw/<date>-<commit>.json; RESULTS.md carries the
headline block built from that file (scripts/bench/bench_headline.py, between `<!-- headline: ... -->` markers).
This test rebuilds each block from its JSON and compares the text, so a figure, ratio or verdict edited by hand
(or a JSON edited after the fact, or a missing JSON) fails. Fast: no benchmark runs here.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from bench_headline import block, stale_blocks  # noqa: E402

BENCH = ROOT / "Benchmarks"


def test_every_headline_block_matches_its_json():
    found, bad = stale_blocks((BENCH / "RESULTS.md").read_text(), BENCH)
    assert found >= 1, "RESULTS.md has no generated headline block"
    assert not bad, "\n".join(bad)


def test_the_headline_runs_carry_provenance():
    text = (BENCH / "RESULTS.md").read_text()
    names = [line.split()[2] for line in text.splitlines() if line.startswith("<!-- headline: ")]
    for name in names:
        p = json.loads((BENCH / name).read_text())["provenance"]
        assert len(p["commit"]) == 40 and all(ch in "0123456789abcdef" for ch in p["commit"]), name
        assert p["built_by_tool"] and not p["dirty"], f"{name}: not a clean build by the tool"
        assert p["machine"]["nproc"] >= 1 and p["machine"]["kernel"] and p["command_line"]
        assert len(p["loadavg_start"]) == 3 and len(p["loadavg_end"]) == 3


def test_a_hand_edited_figure_is_caught(tmp_path):
    # One run's JSON, its block, then the same block with one figure changed: only the edit is reported.
    raw = {"cases": [{"id": "bulk-g2h-1500", "title": "TCP guest→host, MTU 1500",
                      "results": {"vnet-off": {"gbps": [1.6, 1.7, 1.5, 1.65, 1.62]},
                                  "vnet": {"gbps": [9.1, 9.5, 9.4, 9.0, 9.6]},
                                  "slirp": {"gbps": [0.49, 0.46, 0.58, 0.5, 0.47]}}}]}
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "run.json").write_text(json.dumps(raw))
    good = "# Results\n\n" + block(raw, "raw/run.json") + "\ntext after\n"
    assert stale_blocks(good, tmp_path) == (1, [])
    assert "| 1.62 (1.50–1.70) |" in good
    edited = good.replace("| 1.62 (1.50–1.70) |", "| 1.92 (1.50–1.70) |")
    found, bad = stale_blocks(edited, tmp_path)
    assert found == 1 and len(bad) == 1 and "1.92" in bad[0]
    (tmp_path / "raw" / "run.json").unlink()
    assert stale_blocks(good, tmp_path)[1] == ["raw/run.json: the JSON is not in the repository"]
