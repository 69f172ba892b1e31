"""benchmarks/phrasings.py runs end to end (the scripted expert ignores words: a gap of 0 meets the target)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "phrasings.py"


def test_phrasings_benchmark_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("phrasings_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rc = bench.main(["expert", "--tasks", "drive/dc-current", "--episodes", "2", "--max-steps", "4",
                     "--workers", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert rc == 0 and [r["lang"] for r in rows] == ["en", "ja"]
    assert all(r["gap_points"] == 0.0 and r["episodes"] == 2 for r in rows)
    phrased = json.loads((tmp_path / "phrased-ja" / "results.json").read_text(encoding="utf-8"))
    assert {e["instruction"] for e in phrased["episodes"]} <= set(
        json.loads((BENCH.parents[1] / "src/genba/envs/instructions/heldout.json").read_text(
            encoding="utf-8"))["drive/dc-current"]["ja"])
    assert "| ja |" in capsys.readouterr().out
