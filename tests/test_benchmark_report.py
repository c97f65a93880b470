"""The benchmark tables in README.md and docs/performance.md are made from the committed results
(benchmarks/results/*.json) by benchmarks/report.py: the committed tables match the committed
results, a run written by the benchmarks' writer comes back in the tables, a noisy run (probes
spread by more than 25 %) is refused and named, a figure's share of the machine's rate comes from
its stored FLOPs, seconds and probe, and every committed result is one the docs cite."""

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
    """Each file names its commit, date, machine and throughput probe, and the docs cite it: as
    the source of a table, or as a noisy run a table refused (older runs are not kept)."""
    results = report.load_results()
    rendered = "".join(report.render_file(path.read_text(), results, path.name) for path in report.DOCS)
    for path in sorted(report.RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        assert FIELDS <= set(record), f"{path.name} lacks {FIELDS - set(record)}"
        assert record["probe_gflops"] and record["machine"]["torch"]
        assert f"`benchmarks/results/{path.name}`" in rendered, f"{path.name}: no table cites it: remove it"


def _figure(variant: str, seconds: float, dtype: str, probe: float, gflop: float = 4435.0) -> dict:
    """A timed figure as the benchmarks store it: seconds, its round probes, FLOPs and probe."""
    stage = {"seconds": seconds / 4, "peak_rss_gib": 2.0, "vae_tile": 512}
    return {"variant": variant, "seconds": seconds, "times": [seconds, seconds * 1.1], "peak_rss_gib": 2.4,
            "dtype": dtype, "stages": {"encode": stage, "unet": stage, "decode": stage},
            "probes": [{dtype: probe}] * 2, "probe": probe, "gflop": gflop, "share": 0.5}  # a stale share


def _cpu_run_figures(seconds: float, probe: float = 403.0) -> dict:
    """The figures of a cpu_speed.py run, in the shape it writes them, with one timing given."""
    image = _figure("ours-default", seconds, "bf16", probe)
    pair = {"ours": {**image, "round_ratios": [0.2, 0.21], "median_ratio": 0.205},
            "release": _figure("release-default", 5 * seconds, "fp32", probe / 2)}
    return {"image": {"ours-default@auto": image, "ours-default@fp32": _figure("ours-default", 30.0, "fp32", 172)},
            "interleaved": {"ours-default": pair}, "stage_ratios": {}, "quality": {},
            "process": {}, "targets": [{"target": "per image", "value": 0.205, "bound": "<= 0.25", "pass": True}]}


SUMMARY = "x\n<!-- report:summary -->\nold\n<!-- /report:summary -->\ny\n<!-- report:cpu-targets -->\n" \
          "<!-- /report:cpu-targets -->\n"


def test_a_run_written_by_the_benchmarks_comes_back_in_the_tables(tmp_path):
    pytest.importorskip("diffusers")
    import common  # the benchmarks' writer

    for seconds in (3.25, 7.75):  # an older and a newer run: the newer one is shown
        path = common.write_result("cpu-speed", _cpu_run_figures(seconds), probe={"before": {"bf16": 1000}},
                                   out=str(tmp_path / f"cpu-speed-2026-01-0{int(seconds)}T0000.json"))
        record = json.loads(path.read_text())
        assert FIELDS <= set(record) and record["figures"]["image"]["ours-default@auto"]["seconds"] == seconds
        assert record["noisy"] is False and record["machine"]["matrix_features"] in ("AMX", "AVX-512 BF16", "neither")
    results = report.load_results(tmp_path)
    out = report.render_file(SUMMARY, results, "test")
    assert "| 0.205 |" in out  # ours / the release structure, same run: what travels comes first
    assert "7.75 s (bf16, probe bf16 403)" in out and "release 38.75 s (fp32, probe fp32 202)" in out
    assert "3.25" not in out and "Refused" not in out
    assert "| per image | 0.205 | <= 0.25 | pass |" in out
    assert out.startswith("x\n<!-- report:summary -->\n") and "old" not in out and "\ny\n" in out
    assert report.render_file(out, results, "test") == out  # a second run changes nothing


def test_the_share_is_computed_from_the_stored_flops_seconds_and_probe(tmp_path):
    """4435 GFLOP in 12.5 s beside a 403 GFLOP/s bf16 probe is 88 % of the machine's rate (the
    stored `share`, 0.5 here, is not what the table shows); the benchmarks' own share agrees."""
    pytest.importorskip("diffusers")
    import common

    common.write_result("cpu-speed", _cpu_run_figures(12.5), probe={"before": {"bf16": 403}},
                        out=str(tmp_path / "cpu-speed-2026-01-01T0000.json"))
    out = report.render_file(SUMMARY, report.load_results(tmp_path), "test")
    assert "bf16 88% · fp32 86% · release 35%" in out  # 4435 / (30 x 172), 4435 / (62.5 x 201.5)
    figure = common.with_share({"seconds": 12.5, "dtype": "bf16", "probes": [{"bf16": 380}, {"bf16": 403},
                                                                             {"bf16": 410, "fp32": 1}]}, 4435.0)
    assert figure["probe"] == 403 and figure["share"] == pytest.approx(4435 / (12.5 * 403))


def test_the_whole_process_figures_carry_the_probe_of_their_rounds(tmp_path):
    """cpu_speed.py's whole-process part probes both dtypes before each round; the tables show the
    median of those probes beside each process's seconds."""
    pytest.importorskip("diffusers")
    import common

    def process(seconds, rss):
        return {"seconds": seconds, "times": [seconds, seconds + 2], "peak_rss_gib": rss, "summary": None,
                "probes": [{"fp32": 200, "bf16": 800}, {"fp32": 210, "bf16": 900}], "first_run": {"seconds": 60.0}}
    figures = _cpu_run_figures(7.75)
    figures["process"] = {"ours": {**process(20.0, 3.0), "round_ratios": [0.4, 0.5], "median_ratio": 0.45},
                          "release": process(44.0, 9.0), "files_gib": {}}
    common.write_result("cpu-speed", figures, out=str(tmp_path / "cpu-speed-2026-01-01T0000.json"),
                        probe={"process round 1": {"fp32": 200, "bf16": 800},
                               "process round 2": {"fp32": 210, "bf16": 900}})
    results = report.load_results(tmp_path)
    out = report.render_file(SUMMARY, results, "test")
    assert "| whole `pisa-sr upscale` process, one image | 0.450 | – | 20.0 s · release 44.0 s (probe beside: " \
           "fp32 205 · bf16 850) |" in out
    table = report.RENDER["cpu-process"](results)
    assert "| release | 44.0 (44.0–46.0) | fp32 205 · bf16 850 | 9.00 | 60.0 | – |" in table


def test_a_failed_measurement_stays_on_record(tmp_path):
    """A child killed mid-run (here by its own SIGKILL) is kept in the run's JSON with why, and the
    table built from that run names it."""
    pytest.importorskip("diffusers")
    import common

    children = common.Children()
    killed = children.run("ours-default@auto", [sys.executable, "-c", "import os, signal; print('working', "
                                                "flush=True); os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed is None and children.failed == {"ours-default@auto": "exit code -9"}
    assert children.exit_code() == 1
    figures = {**_cpu_run_figures(7.75), "failed": children.failed}
    common.write_result("cpu-speed", figures, probe={"before": {"bf16": 400}},
                        out=str(tmp_path / "cpu-speed-2026-01-01T0000.json"))
    out = report.render_file(SUMMARY, report.load_results(tmp_path), "test")
    assert "Failed in this run: ours-default@auto (exit code -9)." in out


def test_a_noisy_run_is_recorded_and_refused(tmp_path):
    """Probes spread by more than 25 % make a run noisy in its JSON; the tables then show the
    newest quiet run and name the refused one with its spread, or, with none quiet, no figures."""
    pytest.importorskip("diffusers")
    import common

    quiet = common.write_result("cpu-speed", _cpu_run_figures(3.25), out=str(tmp_path / "cpu-speed-2026-01-01T0000.json"),
                                probe={"before": {"bf16": 400, "fp32": 170}, "round 1": {"bf16": 420}})
    noisy = common.write_result("cpu-speed", _cpu_run_figures(7.75), out=str(tmp_path / "cpu-speed-2026-01-02T0000.json"),
                                probe={"before": {"bf16": 100, "fp32": 170}, "round 1": {"bf16": 200, "fp32": 171}})
    assert json.loads(quiet.read_text())["noisy"] is False
    record = json.loads(noisy.read_text())
    assert record["noisy"] is True and record["probe_spread"] == 1.0
    assert record["quiet_gate"]["probe_spread_by_dtype"] == pytest.approx({"bf16": 1.0, "fp32": 1 / 170}, abs=1e-4)
    out = report.render_file(SUMMARY, report.load_results(tmp_path), "test")
    assert "3.25 s" in out and "7.75" not in out
    assert ("Refused: `benchmarks/results/cpu-speed-2026-01-02T0000.json`" in out and "bf16 100–200" in out
            and "spread 100%, above the quiet gate's 25%" in out)
    quiet.unlink()
    out = report.render_file(SUMMARY, report.load_results(tmp_path), "test")
    assert "No `cpu-speed` run passes the quiet gate yet, so no figures are shown" in out
    assert "7.75" not in out and "| per image" not in out and "cpu-speed-2026-01-02T0000.json" in out


def test_a_memory_table_refuses_a_noisy_size_and_keeps_a_quiet_one(tmp_path):
    pytest.importorskip("diffusers")
    import common

    def size(output, probe):
        stages = {k: {"seconds": 1.0, "peak_rss_gib": 1.0, "vae_tile": output} for k in ("encode", "unet", "decode")}
        return {"output": output, "dtype": "bf16", "seconds": 3.0, "peak_rss_gib": 2.5, "stages": stages,
                "probes": [{"bf16": probe}], "probe": probe, "gflop": 600.0}
    common.write_result("memory-cpu", {"results": [size(4096, 400)]}, probe={"before": {"bf16": 400}},
                        out=str(tmp_path / "memory-cpu-2026-01-01T0000.json"))
    common.write_result("memory-cpu", {"results": [size(512, 100), size(4096, 300)]},
                        probe={"before": {"bf16": 100}, "512²": {"bf16": 300}},
                        out=str(tmp_path / "memory-cpu-2026-01-02T0000.json"))
    runs = report.load_runs(tmp_path)
    out = report.memory("cpu")(report.Results(runs))
    assert "| 4096² | bf16 | whole image / whole image | 2.50 | 3.00 s (bf16, probe bf16 400) | 50% |" in out
    assert "| 512² |" not in out and "512², 4096²: Refused: `benchmarks/results/memory-cpu-2026-01-02T0000.json`" in out


def test_the_quiet_gate_and_the_machine_description():
    pytest.importorskip("diffusers")
    import common
    import quiet

    assert quiet.gate({"a": {"bf16": 400}, "b": {"bf16": 500}})["noisy"] is False  # 25 % is still quiet
    assert quiet.gate({"a": {"bf16": 400}, "b": {"bf16": 501}, "c": {"fp32": 9}})["noisy"] is True
    assert quiet.gate({"after": {"fp32": 30, "bf16": 51}})["probe_spread"] == 0  # one reading
    assert common.matrix_features({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}) == "AMX"
    assert common.matrix_features({"avx512f", "avx512_bf16"}) == "AVX-512 BF16"
    assert common.matrix_features({"avx2"}) == "neither"


def test_a_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    """The commit is read when the benchmark starts; a checkout that moved on by the time the run
    writes is recorded beside it."""
    pytest.importorskip("diffusers")
    import common

    now = common.git_commit()
    record = json.loads(common.write_result("flops", {}, probe={"after": {"fp32": 1}},
                                            out=str(tmp_path / "a.json")).read_text())
    assert record["commit"] == common.STARTED_AT
    monkeypatch.setattr(common, "STARTED_AT", "0123456789ab")  # the run started before the last commit
    record = json.loads(common.write_result("flops", {}, probe={"after": {"fp32": 1}},
                                            out=str(tmp_path / "b.json")).read_text())
    assert record["commit"] == "0123456789ab" and record["commit_when_written"] == now


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


def test_the_readme_sentence_on_the_fast_decoder_comes_from_its_run(tmp_path):
    pytest.importorskip("diffusers")
    import common

    def result(decoder, job, seconds, rise=None):
        return {"decoder": decoder, "job": job, "dtype": "bf16", "seconds": seconds,
                **({"peak_rise_gib": rise} if rise else {}), "probes": [{"bf16": 800}]}
    figures = {"device": "cpu", "dtype": "auto", "whole_input": 128, "complete": True,
               "results": [result("vae", "decode-512", 4.0, 0.5), result("fast", "decode-512", 1.0, 0.2),
                           result("vae", "whole", 8.0), result("fast", "whole", 6.0)],
               "fast_over_vae": {"decode-512": {"seconds": 0.25, "peak_memory": 0.4}, "whole": {"seconds": 0.75}}}
    common.write_result("decoder-speed-cpu", figures, probe={"before": {"bf16": 800}},
                        out=str(tmp_path / "decoder-speed-cpu-2026-01-01T0000.json"))
    out = report.RENDER["decoder-summary"](report.load_results(tmp_path))
    assert out.startswith("Measured beside the VAE's decoder in one run ([table](docs/performance.md#fast-decoder); "
                          "bf16, ") and "matrix features: " in out
    assert out.endswith(": the decode at 512² 0.25 of its time and 0.40 of its peak memory rise; a whole default "
                        "upscale (128² → 512²) 0.75.\n")
    none = report.load_results(tmp_path / "none")
    assert "No `decoder-speed-cpu` result yet" in report.RENDER["decoder-summary"](none)
