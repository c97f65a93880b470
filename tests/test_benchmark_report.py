"""The benchmark tables in README.md and docs/performance.md are made from the committed results
(benchmarks/results/*.json) by benchmarks/report.py: the committed tables match the committed
results, a run written by the benchmarks' writer comes back in the tables, and every committed
result is one the docs cite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402

FIELDS = {"benchmark", "commit", "date", "command", "machine", "probe_gflops", "figures"}


def test_the_committed_tables_match_the_committed_results():
    results = report.load_results()
    for path in report.DOCS:
        text = path.read_text()
        assert report.REGION.search(text), f"{path.name} has no report region"
        assert report.render_file(text, results, path.name) == text, \
            f"{path.name}: tables out of date with benchmarks/results; run `{report.COMMAND}`"
    assert report.main(["--check"]) == 0


def test_every_committed_result_is_complete_and_cited():
    """Each file is the newest run of its benchmark (older runs are not kept) and names its
    commit, date, machine and throughput probe; the docs show a region fed by it."""
    files = sorted(report.RESULTS.glob("*.json"))
    newest = {r["file"] for r in report.load_results().values()}
    newest |= {run["file"] for name, runs in report.load_runs().items() if name.startswith("memory-")
               for run, _ in report.memory_rows(runs)}  # a memory table takes each size from its newest run
    regions = {m["name"] for path in report.DOCS for m in report.REGION.finditer(path.read_text())}
    for path in files:
        record = json.loads(path.read_text())
        assert FIELDS <= set(record), f"{path.name} lacks {FIELDS - set(record)}"
        assert path.name in newest, f"{path.name} is an older run of {record['benchmark']}: remove it"
        assert record["probe_gflops"] and record["machine"]["torch"]
        cited = {"cpu-speed": "summary", "flops": "flops", "speed-cuda": "gpu-speed"}.get(record["benchmark"],
                                                                                          record["benchmark"])
        assert cited in regions, f"{path.name}: no region of the docs shows {record['benchmark']}"


def _cpu_run_figures(seconds: float) -> dict:
    """The figures of a cpu_speed.py run, in the shape it writes them, with one timing given."""
    stage = {"seconds": seconds / 4, "peak_rss_gib": 2.0, "vae_tile": 512}
    image = {"variant": "ours-default", "seconds": seconds, "times": [seconds, seconds * 1.1], "peak_rss_gib": 2.4,
             "dtype": "bf16", "stages": {"encode": stage, "unet": stage, "decode": stage}}
    pair = {"ours": {**image, "round_ratios": [0.2, 0.21], "median_ratio": 0.205},
            "release": {**image, "seconds": 5 * seconds, "dtype": "fp32"}}
    return {"image": {"ours-default@auto": image, "ours-default@fp32": {**image, "dtype": "fp32"}},
            "interleaved": {"ours-default": pair}, "stage_ratios": {}, "quality": {},
            "process": {}, "targets": [{"target": "per image", "value": 0.205, "bound": "<= 0.25", "pass": True}]}


def test_a_run_written_by_the_benchmarks_comes_back_in_the_tables(tmp_path):
    pytest.importorskip("diffusers")
    import common  # the benchmarks' writer

    for seconds in (3.25, 7.75):  # an older and a newer run: the newer one is shown
        path = common.write_result("cpu-speed", _cpu_run_figures(seconds), probe={"before": {"bf16": 1000}},
                                   out=str(tmp_path / f"cpu-speed-2026-01-0{int(seconds)}T0000.json"))
        record = json.loads(path.read_text())
        assert FIELDS <= set(record) and record["figures"]["image"]["ours-default@auto"]["seconds"] == seconds
    results = report.load_results(tmp_path)
    text = "x\n<!-- report:summary -->\nold\n<!-- /report:summary -->\ny\n<!-- report:cpu-targets -->\n" \
           "<!-- /report:cpu-targets -->\n"
    out = report.render_file(text, results, "test")
    assert "7.75 s (bf16)" in out and "38.75 s" in out and "3.25" not in out  # ours and the release structure
    assert "| per image | 0.205 | <= 0.25 | pass |" in out
    assert out.startswith("x\n<!-- report:summary -->\n") and "old" not in out and "\ny\n" in out
    assert report.render_file(out, results, "test") == out  # a second run changes nothing


def test_an_unknown_region_is_an_error():
    with pytest.raises(SystemExit, match="unknown report region 'nonsense'"):
        report.render_file("<!-- report:nonsense -->\n<!-- /report:nonsense -->", {}, "doc.md")


def test_the_vae_tile_speed_table_compares_auto_with_the_fastest_fixed_tile(tmp_path):
    """vae_tile_speed.py's summary of its seconds, written and rendered: auto / fastest fixed tile
    per stage and in total, and a stopped run says how far it got."""
    pytest.importorskip("diffusers")
    import common
    from vae_tile_speed import summarise

    seconds = {"encode": {"auto": [10.0], 256: [12.0], 1024: [8.0]}, "decode": {"auto": [20.0], 256: [16.0]}}
    figures = {"size": 2048, "dtype": "bf16", "rounds": 1, "order": ["auto", 256, 1024], "complete": False,
               "seconds": seconds, **summarise(seconds, {"encode": 512, "decode": 512}, [256, 1024])}
    common.write_result("vae-tile-speed-cpu", figures, probe={"before": {"bf16": 100}},
                        out=str(tmp_path / "vae-tile-speed-cpu-2026-01-01T0000.json"))
    out = report.RENDER["vae-tile-speed-cpu"](report.load_results(tmp_path))
    assert "| auto (512 / 512) | 10.0 | 20.0 | 30.0 |" in out and "| 1024 px | 8.0 | – | – |" in out
    assert "encode 1.25 (fastest fixed: 1024 px); decode 1.25 (fastest fixed: 256 px); total 1.07 (fastest " \
           "fixed: 256 px)" in out
    assert "stopped after 5 of its 6 measurements" in out
