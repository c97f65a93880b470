"""The benchmark tables of the docs, made from the committed results (benchmarks/results/*.json,
one file per run, written by common.write_result): the newest run of each benchmark that passes
the quiet gate (benchmarks/quiet.py: its matrix-product probes spread by at most 25 %) fills the
marked regions of README.md and docs/performance.md; a noisy run is never shown, and the region
names it and its spread instead,

    <!-- report:NAME -->
    ...generated...
    <!-- /report:NAME -->

    python benchmarks/report.py           # rewrite the regions in place
    python benchmarks/report.py --check   # exit 1 when a region differs from the results

Reads JSON and writes Markdown only: it imports neither torch nor the benchmarks (only the
gate's rules, benchmarks/quiet.py).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from quiet import QUIET_LIMIT, readings_by_dtype, share, verdict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = (ROOT / "README.md", ROOT / "docs" / "performance.md", ROOT / "docs" / "tiling.md", ROOT / "docs" / "images.md")
COMMAND = "python benchmarks/report.py"
REGION = re.compile(r"(<!-- report:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)", re.DOTALL)

STAGE_NAMES = {"encode": "VAE encode", "unet": "UNet", "decode": "VAE decode",
               "unet (adjustable)": "UNet, adjustable (two passes as one batch)",
               "decode (fast decoder)": "fast decoder (timed in decoder-speed)"}
VARIANT_NAMES = {"ours-default": "ours, default λ = (1, 1)", "ours-adjustable": "ours, adjustable λ = (0.8, 1.2)",
                 "ours-readjust": "ours, new λ from cached ε (guide + decode + colour fix)",
                 "ours-decode": "ours, VAE decode + colour fix alone"}


# ------------------------------------------------------------------------------ the results


def load_runs(folder: Path = RESULTS) -> dict[str, list[dict]]:
    """benchmark name -> its runs, oldest first (file names end in the run's date, so they sort by
    it), each with its file name and its quiet gate (recomputed from its stored probes)."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        record["file"], record["gate"] = path.name, verdict(record)
        runs.setdefault(record["benchmark"], []).append(record)
    return runs


def choose(runs: list[dict]) -> tuple[dict | None, list[dict]]:
    """(the newest run that passes the quiet gate, else None; the noisy runs newer than it)."""
    quiet = [r for r in runs if not r["gate"]["noisy"]]
    shown = quiet[-1] if quiet else None
    return shown, [r for r in runs if r["gate"]["noisy"] and (shown is None or r["file"] > shown["file"])]


class Results(dict):
    """benchmark name -> its newest run that passes the quiet gate; `refused[name]`: the noisy
    runs newer than it (all of them when none passes); `runs[name]`: every run."""

    def __init__(self, runs: dict[str, list[dict]]):
        super().__init__()
        self.runs, self.refused = runs, {}
        for name, found in runs.items():
            shown, self.refused[name] = choose(found)
            if shown is not None:
                self[name] = shown


def load_results(folder: Path = RESULTS) -> Results:
    return Results(load_runs(folder))


def memory_rows(runs: list[dict]) -> tuple[list[tuple[dict, dict]], dict[int, list[dict]]]:
    """(run, row) per output size, each size from the newest run that measured it and passes the
    quiet gate (a large size takes a long run, so the sizes of one table may come from several
    runs), and per size the noisy runs refused for it."""
    by_size: dict[int, list[tuple[dict, dict]]] = {}
    for run in runs:
        for row in run["figures"]["results"]:
            by_size.setdefault(row["output"], []).append((run, row))
    rows, refused = [], {}
    for size in sorted(by_size):
        shown, refused[size] = choose([run for run, _ in by_size[size]])
        if shown is not None:
            rows.append(next(pair for pair in by_size[size] if pair[0] is shown))
    return rows, {size: found for size, found in refused.items() if found}


def machine_line(m: dict) -> str:
    """CPU model, its matrix features (AMX, AVX-512 BF16 or neither), cores, threads used; or the GPU."""
    if m.get("gpu"):
        return m["gpu"]
    features = m.get("matrix_features") or ("AMX" if m.get("amx_tile") else
                                            "AVX-512 BF16" if m.get("avx512_bf16") else "neither")
    cores = f"{m['cores']} cores" if m.get("cores") else f"{m['logical_cpus']} logical CPUs"
    return f"{m['cpu_model']} (matrix features: {features}), {cores}, {m['threads']} threads used"


def probe_line(record: dict) -> str:
    """The run's matrix-product probes: per dtype the range, their number and the gate's spread."""
    by_dtype = readings_by_dtype(record["probe_gflops"].values())
    ranges = ", ".join(f"{d} {min(v):g}" + (f"–{max(v):g}" if max(v) != min(v) else "") for d, v in by_dtype.items())
    gate = record["gate"]
    return (f"matrix-product probe (GFLOP/s, 2048² matmul, {gate['readings']} reading"
            f"{'s' if gate['readings'] > 1 else ''}) {ranges}: spread {gate['probe_spread']:.0%}")


def source_line(record: dict) -> str:
    """Where a table's figures come from: date, commit, machine, probes, file; and the measurements
    of that run that failed (a child killed, out of memory, ...), which its tables lack."""
    failed = record["figures"].get("failed") if isinstance(record["figures"], dict) else None
    lost = ("".join(f" Failed in this run: {label} ({why})." for label, why in failed.items()) if failed else "")
    return (f"*{record['date'][:10]}, commit `{record['commit']}`, {machine_line(record['machine'])}, torch "
            f"{record['machine']['torch']}; {probe_line(record)}. Data: `benchmarks/results/{record['file']}`.{lost}*")


def refusal(record: dict) -> str:
    """Which run was refused and why."""
    return (f"Refused: `benchmarks/results/{record['file']}` ({record['date'][:10]}, commit `{record['commit']}`): "
            f"its {probe_line(record)}, above the quiet gate's {QUIET_LIMIT:.0%}: other jobs shared the processor.")


def refusals(results: Results, name: str) -> str:
    return "".join(f"\n{refusal(r)}" for r in results.refused.get(name, []))


def share_of(figure: dict) -> float | None:
    """A timed figure's share of the probe beside it, from its stored FLOPs, seconds and probe."""
    if not {"gflop", "probe"} <= set(figure):
        return None
    return share(figure["gflop"], figure["seconds"], figure["probe"])


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def seconds_with_probe(figure: dict) -> str:
    probe = f", probe {figure['dtype']} {figure['probe']:.0f}" if "probe" in figure else ""
    return f"{figure['seconds']:.2f} s ({figure['dtype']}{probe})" if probe else f"{figure['seconds']:.2f} s"


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# ------------------------------------------------------------------------------ the regions


def missing(benchmark: str, command: str, results: Results | None = None) -> str:
    """No run of `benchmark` to show: the refused ones and why, and how to make one."""
    refused = results.refused.get(benchmark, []) if results is not None else []
    if not refused:
        return f"No `{benchmark}` result yet: `{command}` writes one.\n"
    return (f"No `{benchmark}` run passes the quiet gate yet, so no figures are shown: `{command}` on a machine "
            f"without other jobs writes one.\n\n" + "".join(f"- {refusal(r)}\n" for r in refused))


SUMMARY_VARIANTS = ("ours-default", "ours-adjustable")


def summary(results: Results) -> str:
    """README: what travels first (ours / the release structure in the same run; the share of the
    machine's matrix-product rate), then the seconds with the probe beside them."""
    gpu = results.get("speed-cuda")
    gpu_line = (f"GPU: see [docs/performance.md](docs/performance.md#gpu) ({gpu['machine'].get('gpu')})."
                if gpu else "GPU: not measured yet (`bash benchmarks/gpu.sh` measures it).")
    cpu = results.get("cpu-speed")
    if cpu is None:
        return missing("cpu-speed", "python benchmarks/cpu_speed.py", results) + f"\n{gpu_line}\n"
    f = cpu["figures"]
    rows = []
    for variant in SUMMARY_VARIANTS:
        pair = f["interleaved"].get(variant)  # ours and the release structure in turn
        fp32 = f["image"].get(f"{variant}@fp32")
        if not pair:
            continue
        ours, release = pair["ours"], pair["release"]
        shares = [f"{ours['dtype']} {_pct(share_of(ours))}", f"release {_pct(share_of(release))}"]
        seconds = [seconds_with_probe(ours), f"release {seconds_with_probe(release)}"]
        if fp32:
            shares.insert(1, f"fp32 {_pct(share_of(fp32))}")
            seconds.insert(1, seconds_with_probe(fp32))
        rows.append([f"one 128² → 512² image, {VARIANT_NAMES[variant].removeprefix('ours, ')}",
                     f"{ours['median_ratio']:.3f}", " · ".join(shares), " · ".join(seconds)])
    process = f["process"]
    if "ours" in process and "release" in process:
        rows.append(["whole `pisa-sr upscale` process, one image", f"{process['ours']['median_ratio']:.3f}", "–",
                     f"{process['ours']['seconds']:.1f} s · release {process['release']['seconds']:.1f} s "
                     f"(probe beside: {_round_probes(process['ours'])})"])
    return (_table(["CPU", "ours auto / release structure (fp32), same run",
                    "share of the machine's matmul rate in its dtype: ours auto · ours fp32 · release",
                    "seconds (dtype, probe GFLOP/s beside)"], rows)
            + f"\n\n{source_line(cpu)}{refusals(results, 'cpu-speed')}\n{gpu_line}\n")


def cpu_run(body):
    """A region fed by the newest quiet cpu_speed.py run (rendered by `body(run)`), with the
    noisy runs refused since; or why there is none."""
    def render(results: Results) -> str:
        cpu = results.get("cpu-speed")
        if cpu is None:
            return missing("cpu-speed", "python benchmarks/cpu_speed.py", results)
        return body(cpu) + f"\n\n{source_line(cpu)}{refusals(results, 'cpu-speed')}\n"
    return render


@cpu_run
def cpu_image(cpu: dict) -> str:
    f = cpu["figures"]

    def row(name: str, r: dict, times: str) -> list[str]:
        return [name, r["dtype"], f"{r['seconds']:.2f}", times, _s(r.get("probe"), 0), _pct(share_of(r))]
    rows = [row(VARIANT_NAMES.get(r["variant"], r["variant"]), r, f"{min(r['times']):.2f}–{max(r['times']):.2f}")
            + [f"{r['peak_rss_gib']:.2f}"] for r in f["image"].values()]
    for variant, pair in f["interleaved"].items():
        ratios = "ratio by round " + ", ".join(f"{x:.3f}" for x in pair["ours"]["round_ratios"])
        for side, who in (("ours", VARIANT_NAMES[variant]), ("release", "release structure")):
            rows.append(row(f"in turn in one process: {who}", pair[side], ratios if side == "ours" else "") + [""])
    return _table(["variant", "dtype", "median s per image", "min–max s", "probe GFLOP/s (median of its rounds)",
                   "share of the probe", "peak RSS GiB (run)"], rows)


@cpu_run
def cpu_stages(cpu: dict) -> str:
    rows = [[STAGE_NAMES.get(stage, stage), f"{r['auto_s']:.2f}", f"{r['fp32_s']:.2f}", f"{r['ratio']:.2f}"]
            for stage, r in cpu["figures"]["stage_ratios"].items()]
    quality = [f"{variant}: PSNR {q['psnr_db']:.1f} dB, mean |Δ| {q['mean_abs']:.1e}, max |Δ| {q['max_abs']:.2f}"
               for variant, q in cpu["figures"]["quality"].items()]
    text = _table(["stage (one 512² output)", "auto s", "fp32 s", "auto / fp32"], rows)
    if quality:
        text += "\n\nauto against fp32 on the same random model, [0, 1] scale: " + "; ".join(quality) + "."
    return text


@cpu_run
def cpu_process(cpu: dict) -> str:
    process = {k: v for k, v in cpu["figures"]["process"].items() if k != "files_gib"}
    rows = [[name, f"{r['seconds']:.1f} ({min(r['times']):.1f}–{max(r['times']):.1f})", _round_probes(r),
             f"{r['peak_rss_gib']:.2f}", f"{r['first_run']['seconds']:.1f}",
             f"`{r['summary']}`" if r["summary"] else "–"]
            for name, r in process.items()]
    if not rows:
        return "The whole-process part was not run in this run (`--skip process`)."
    return _table(["process", "wall s, median (min–max)", "probe GFLOP/s beside (median of its rounds)",
                   "peak RSS GiB", "first run s (fills the caches)", "its summary line (last round)"], rows)


def _round_probes(figure: dict) -> str:
    """The median probe per dtype over the rounds of a figure (`probes`: one reading per round)."""
    by_dtype = readings_by_dtype(figure.get("probes") or [])
    return " · ".join(f"{d} {statistics.median(v):.0f}" for d, v in by_dtype.items()) or "–"


@cpu_run
def cpu_targets(cpu: dict) -> str:
    rows = [[t["target"], _s(t["value"], 3), t["bound"],
             "not run" if t["pass"] is None else ("pass" if t["pass"] else "**fail**")]
            for t in cpu["figures"]["targets"]]
    return _table(["target", "measured", "bound", ""], rows)


def flops(results: Results) -> str:
    """GFLOP per stage (counted on the meta device) and the share of the machine's matrix
    throughput each stage reaches in the newest quiet CPU run (auto and fp32): the stage's GFLOP
    over its seconds times the probe taken beside its rounds, in its dtype."""
    counted, cpu = results.get("flops"), results.get("cpu-speed")
    if counted is None:
        return missing("flops", "python benchmarks/flops.py", results)
    image = cpu["figures"]["image"] if cpu else {}
    header = ["stage (128² → 512²)", "GFLOP"]
    dtypes = [d for d in ("auto", "fp32") if f"ours-default@{d}" in image]
    for d in dtypes:
        name = image[f"ours-default@{d}"]["dtype"]
        header += [f"{name} s", f"{name} GFLOP/s (share of the {name} matmul probe)"]
    rows = []
    for stage, gflop in counted["figures"]["stages_gflop"].items():
        row = [STAGE_NAMES.get(stage, stage), f"{gflop:.0f}"]
        for d in dtypes:
            variant = "ours-adjustable" if stage.endswith("(adjustable)") else "ours-default"
            run = image.get(f"{variant}@{d}", {})
            measured = None if "fast" in stage else run.get("stages", {}).get(stage.split(" ")[0])
            if measured is None:
                row += ["–", "–"]
                continue
            part = {"gflop": gflop, "seconds": measured["seconds"], **({"probe": run["probe"]} if "probe" in run else {})}
            share = share_of(part)
            row += [f"{measured['seconds']:.2f}", f"{gflop / measured['seconds']:.0f}"
                    + (f" ({share:.0%})" if share is not None else "")]
        rows.append(row)
    text = _table(header, rows) + (f"\n\nCounted: *{counted['date'][:10]}, commit `{counted['commit']}`, torch "
                                   f"{counted['machine']['torch']}. Data: `benchmarks/results/{counted['file']}`.*")
    if cpu:
        text += f"\nTimed: {source_line(cpu)}"
    else:
        text += "\nNot timed: no CPU run passes the quiet gate." + refusals(results, "cpu-speed")
    return text + "\n"


def memory(device: str):
    def render(results: Results) -> str:
        name = f"memory-{device}"
        runs = results.runs.get(name)
        if not runs:
            return missing(name, f"python benchmarks/memory.py --device {device}")
        shown, refused = memory_rows(runs)
        rows, sources = [], []
        for run, r in shown:
            s = r["stages"]
            tiles = " / ".join("whole image" if s[k]["vae_tile"] >= r["output"] else str(s[k]["vae_tile"])
                               for k in ("encode", "decode"))
            gpu = [f"{r['peak_gpu_gib']:.2f}"] if "peak_gpu_gib" in r else []
            rows.append([f"{r['output']}²", r["dtype"], tiles, f"{r['peak_rss_gib']:.2f}", *gpu,
                         seconds_with_probe(r), _pct(share_of(r)),
                         " / ".join(f"{s[k]['seconds']:.1f}" for k in ("encode", "unet", "decode"))])
            entry = next((entry for entry in sources if entry[0] is run), None)
            if entry is None:
                sources.append((run, [r["output"]]))
            else:
                entry[1].append(r["output"])
        header = ["output (input ×4)", "dtype", "VAE tile (encode / decode)", "peak RSS GiB"]
        header += ["peak GPU GiB"] if any("peak_gpu_gib" in r for _, r in shown) else []
        header += ["total (probe beside)", "share of the probe", "encode / UNet / decode s"]
        lines = [f"{', '.join(f'{size}²' for size in sizes)}: {source_line(run)}" for run, sizes in sources]
        refused_sizes: dict[str, tuple[dict, list[int]]] = {}
        for size, found in refused.items():
            for run in found:
                refused_sizes.setdefault(run["file"], (run, []))[1].append(size)
        lines += [f"{', '.join(f'{size}²' for size in sizes)}: {refusal(run)}"
                  for run, sizes in sorted(refused_sizes.values(), key=lambda entry: entry[0]["file"])]
        table = _table(header, rows) if rows else f"No `{name}` run passes the quiet gate yet, so no figures are shown."
        return table + "\n\n" + "\n\n".join(lines) + "\n"
    return render


def per_device(benchmark: str, script: str):
    """A region per device from the newest quiet run of `benchmark`-<device> (rendered by the
    decorated function), with the noisy runs refused since; or why there is none."""
    def decorate(body):
        def for_device(device: str):
            def render(results: Results) -> str:
                name = f"{benchmark}-{device}"
                run = results.get(name)
                if run is None:
                    return missing(name, f"python benchmarks/{script} --device {device}", results)
                return body(run) + f"\n\n{source_line(run)}{refusals(results, name)}\n"
            return render
        return for_device
    return decorate


@per_device("vae-tiles", "vae_tiles.py")
def vae_tiles(run: dict) -> str:
    f = run["figures"]

    def timing(r: dict) -> list[str]:
        return [f"{r[f'{k}_s']:.1f}" + (f" ({r[f'{k}_share']:.0%})" if f"{k}_share" in r else "")
                for k in ("encode", "decode")] + [_s(r.get("probe"), 0)]
    rows = [["untiled (reference)", "–", "–", *timing(r)] if r["tile"] == "untiled" else
            [f"{r['tile']} px", f"{100 * r['encode_mean_of_std']:.4f} / {100 * r['encode_max_of_std']:.4f}",
             f"{r['decode_mean_levels']:.4f} / {r['decode_max_levels']:.4f}", *timing(r)] for r in f["rows"]]
    header = ["VAE tile", "encode: mean / max abs diff, % of latent std", "decode: mean / max abs diff, 8-bit levels",
              "encode s (share of the probe)", "decode s (share of the probe)", "probe GFLOP/s"]
    return f"{f['size']}² image, {f['dtype']}:\n\n" + _table(header, rows)


@per_device("vae-tile-speed", "vae_tile_speed.py")
def vae_tile_speed(run: dict) -> str:
    f = run["figures"]
    def tile(px: int) -> str:
        return "whole image" if px >= f["size"] else str(px)
    rows = [[f"auto ({tile(r['encode_auto_tile'])} / {tile(r['decode_auto_tile'])})" if r["tile"] == "auto"
             else f"{r['tile']} px" + (" (untiled)" if r["tile"] >= f["size"] else ""),
             *(_s(r[k], 1) for k in ("encode_s", "decode_s", "total_s"))] for r in f["rows"]]
    ratios = "; ".join(f"{stage} {found['auto_over_fastest']:.2f} (fastest fixed: {found['fastest_fixed_tile']} px)"
                       for stage, found in f["auto_over_fastest"].items()) or "not measured"
    done = sum(len(times) for stage in f["seconds"].values() for times in stage.values())
    planned = 2 * f["rounds"] * len(f["order"])
    stopped = "" if f["complete"] else f" The run was stopped after {done} of its {planned} measurements."
    return (f"{f['size']}² image, {f['dtype']}, {f['rounds']} round(s), measured in the order "
            f"{', '.join(map(str, f['order']))} (encodes, then decodes):{stopped}\n\n"
            + _table(["VAE tile (encode / decode)", "encode s", "decode s", "total s"], rows)
            + f"\n\nauto / fastest fixed tile: {ratios}.")


def gpu_speed(results: Results) -> str:
    run = results.get("speed-cuda")
    if run is None:
        return missing("speed-cuda", "bash benchmarks/gpu.sh", results)
    rows = [[r["variant"], r["dtype"], f"{r['seconds'] * 1000:.1f}", _s(r.get("probe"), 0), _pct(share_of(r)),
             _s(r.get("peak_gpu_gib"))] for r in run["figures"]["results"]]
    return (_table(["variant", "dtype", "median ms per image", "probe GFLOP/s", "share of the probe", "peak GPU GiB"],
                   rows) + f"\n\n{source_line(run)}{refusals(results, 'speed-cuda')}\n")


@per_device("decoder-speed", "decoder_speed.py")
def decoder_speed(run: dict) -> str:
    f = run["figures"]
    by = {(r["decoder"], r["job"]): r for r in f["results"]}
    rows = []
    for job, ratio in f["fast_over_vae"].items():
        vae, fast = by[("vae", job)], by[("fast", job)]
        name = (f"whole default upscale ({f['whole_input']}² → {4 * f['whole_input']}²)" if job == "whole"
                else f"decode stage, {job.removeprefix('decode-')}² output")
        timing = [f"{r['seconds']:.1f}" + (f" ({share_of(r):.0%})" if share_of(r) is not None else "")
                  for r in (vae, fast)]
        memory = [_s(vae.get("peak_rise_gib")), _s(fast.get("peak_rise_gib")), _s(ratio.get("peak_memory"))]
        rows.append([name, vae["dtype"], *timing, _s(ratio["seconds"]), *memory])
    header = ["measurement", "dtype", "VAE decoder s (share of the probe)", "fast decoder s (share)",
              "fast / VAE time", "decode peak rise, VAE GiB", "fast GiB", "fast / VAE memory"]
    return _table(header, rows)


def image_libraries(results: dict) -> str:
    """docs/images.md: our 16-bit TIFF reader and ICC conversion beside tifffile and ImageCms."""
    run = results.get("image-libraries")
    if run is None:
        return missing("image-libraries", "python benchmarks/image_libraries.py", results)
    f = run["figures"]
    rows = [[name, r["ours_equal"], r.get("tifffile_equal", "–"), _s(r["ours_s"] and 1000 * r["ours_s"], 1),
             _s(r.get("tifffile_s") and 1000 * r["tifffile_s"], 1)] for name, r in f["tiff16_reading"].items()]
    damaged = [[name, r["ours"], r.get("tifffile", "–")] for name, r in f["damaged_tiffs"].items()]
    w, icc = f["tiff16_writing"], f["icc_p3_to_srgb"]
    levels = icc["distinct_levels_of_a_16bit_ramp"]
    return (f"16-bit RGB TIFF, {f['side']}², tifffile {f['tifffile']} with imagecodecs {f.get('imagecodecs', '–')}:\n\n"
            + _table(["file", "ours", "tifffile", "ours ms", "tifffile ms"], rows)
            + "\n\nDamaged files (fuzz findings):\n\n" + _table(["file", "ours", "tifffile"], damaged)
            + f"\n\nWriting RGBA (deflate + predictor): ours {1000 * w['ours_s']:.0f} ms, {w['ours_bytes']:,} bytes; "
            f"tifffile {_s(w.get('tifffile_s') and 1000 * w['tifffile_s'], 0)} ms, {w.get('tifffile_bytes', '–'):,} bytes; "
            f"tifffile reads ours: {w.get('tifffile_reads_ours', '–')}.\n\n"
            f"Display P3 → sRGB, {f['side']}² 8-bit: ours {1000 * icc['ours_s']:.0f} ms, ImageCms "
            f"{1000 * icc['imagecms_s']:.0f} ms; at most {icc['max_diff_8bit_levels']} level apart "
            f"({100 * icc['share_differing_8bit']:.1f} % of samples differ); of a 16-bit ramp's 65536 levels ours keeps "
            f"{levels['ours']}, ImageCms (8-bit colour modes only) {levels['imagecms']}.\n\n{source_line(run)}\n")


def decoder_summary(results: Results) -> str:
    """README: the fast decoder against the VAE's decoder in one sentence, from the newest quiet
    CPU run (the table in docs/performance.md has the rest)."""
    run = results.get("decoder-speed-cpu")
    if run is None:
        return missing("decoder-speed-cpu", "python benchmarks/decoder_speed.py", results)
    f, m = run["figures"], run["machine"]
    parts = []
    for job, ratio in f["fast_over_vae"].items():
        if job == "whole":
            whole = f"{f['whole_input']}² → {4 * f['whole_input']}²"
            parts.append(f"a whole default upscale ({whole}) {ratio['seconds']:.2f}")
        else:
            memory = f" and {ratio['peak_memory']:.2f} of its peak memory rise" if "peak_memory" in ratio else ""
            parts.append(f"the decode at {job.removeprefix('decode-')}² {ratio['seconds']:.2f} of its time{memory}")
    dtype = f["results"][0]["dtype"] if f["results"] else f["dtype"]
    return (f"Measured beside the VAE's decoder in one run ([table](docs/performance.md#fast-decoder); {dtype}, "
            f"{machine_line(m)}): {'; '.join(parts)}.\n")


RENDER = {"summary": summary, "decoder-summary": decoder_summary, "image-libraries": image_libraries,
          "cpu-image": cpu_image, "cpu-stages": cpu_stages,
          "cpu-process": cpu_process,
          "cpu-targets": cpu_targets, "flops": flops, "memory-cpu": memory("cpu"), "gpu-speed": gpu_speed,
          "memory-cuda": memory("cuda"), "vae-tiles-cpu": vae_tiles("cpu"),
          "vae-tile-speed-cpu": vae_tile_speed("cpu"), "decoder-speed-cpu": decoder_speed("cpu"),
          "decoder-speed-cuda": decoder_speed("cuda")}


# ------------------------------------------------------------------------------ the files


def render_file(text: str, results: dict, where: str) -> str:
    """`text` with every marked region rewritten; an unknown region name is an error."""
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDER:
            raise SystemExit(f"{where}: unknown report region {name!r} (known: {', '.join(RENDER)})")
        return match[1] + RENDER[name](results) + match[4]
    return REGION.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a region is out of date")
    args = parser.parse_args(argv)
    results = load_results()
    stale = []
    for path in DOCS:
        text = path.read_text()
        new = render_file(text, results, path.name)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date with benchmarks/results: {', '.join(map(str, stale))}; run `{COMMAND}`", file=sys.stderr)
        return 1
    for path in stale:
        print(f"rewrote the tables of {path}")
    for runs in results.refused.values():
        for run in runs:
            print(refusal(run).replace("`", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
