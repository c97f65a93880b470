"""The benchmark tables of the docs, made from the committed results (benchmarks/results/*.json,
one file per run, written by common.write_result): the newest run of each benchmark fills the
marked regions of README.md and docs/performance.md,

    <!-- report:NAME -->
    ...generated...
    <!-- /report:NAME -->

    python benchmarks/report.py           # rewrite the regions in place
    python benchmarks/report.py --check   # exit 1 when a region differs from the results

Reads JSON and writes Markdown only: it imports neither torch nor the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

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
    """benchmark name -> its runs, oldest first (file names end in the run's date, so they sort by it)."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        record["file"] = path.name
        runs.setdefault(record["benchmark"], []).append(record)
    return runs


def load_results(folder: Path = RESULTS) -> dict[str, dict]:
    """benchmark name -> its newest run."""
    return {name: records[-1] for name, records in load_runs(folder).items()}


def memory_rows(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(run, row) per output size, each size from the newest run that measured it: a large size
    takes a long run, so the sizes of one table may come from several runs."""
    by_size = {row["output"]: (run, row) for run in runs for row in run["figures"]["results"]}
    return [by_size[size] for size in sorted(by_size)]


def source_line(record: dict) -> str:
    """Where a table's figures come from: file, date, commit, machine, throughput probe."""
    m = record["machine"]
    machine = m.get("gpu") or f"{m['cpu_model']}, {m['threads']} threads"
    probe = "; ".join(f"{when} " + ", ".join(f"{k} {v}" for k, v in found.items())
                      for when, found in record["probe_gflops"].items())
    return (f"*{record['date'][:10]}, commit `{record['commit']}`, {machine}, torch {m['torch']}; matrix throughput "
            f"(GFLOP/s, 2048² matmul) {probe}. Data: `benchmarks/results/{record['file']}`.*")


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# ------------------------------------------------------------------------------ the regions


def missing(benchmark: str, command: str) -> str:
    return f"No `{benchmark}` result yet: `{command}` writes one.\n"


def summary(results: dict) -> str:
    """README: per image and whole process, ours against the release structure, CPU (and GPU)."""
    cpu = results.get("cpu-speed")
    if cpu is None:
        return missing("cpu-speed", "python benchmarks/cpu_speed.py")
    f = cpu["figures"]
    rows = []
    for variant in ("ours-default", "ours-adjustable"):
        pair = f["interleaved"].get(variant)  # ours and the release structure in turn, else ours alone
        ours = pair["ours"] if pair else f["image"].get(f"{variant}@auto")
        fp32 = f["image"].get(f"{variant}@fp32")
        if ours:
            rows.append([f"one 128² → 512² image, {VARIANT_NAMES[variant].removeprefix('ours, ')}",
                         f"{ours['seconds']:.2f} s ({ours['dtype']})", _s(fp32 and fp32["seconds"]) + " s",
                         f"{pair['release']['seconds']:.2f} s" if pair else "not measured"])
    process = f["process"]
    if "ours" in process and "release" in process:
        rows.append(["whole `pisa-sr upscale` process, one image", f"{process['ours']['seconds']:.1f} s",
                     _s(process.get("ours-fp32", {}).get("seconds"), 1) + " s",
                     f"{process['release']['seconds']:.1f} s"])
        rows.append(["its peak memory (RSS)", f"{process['ours']['peak_rss_gib']:.2f} GiB",
                     _s(process.get("ours-fp32", {}).get("peak_rss_gib")) + " GiB",
                     f"{process['release']['peak_rss_gib']:.2f} GiB"])
    gpu = results.get("speed-cuda")
    gpu_line = (f"GPU: see [docs/performance.md](docs/performance.md#gpu) ({gpu['machine'].get('gpu')})."
                if gpu else "GPU: not measured yet (`bash benchmarks/gpu.sh` measures it).")
    return (_table(["CPU", "ours, auto", "ours, fp32", "release structure (fp32)"], rows)
            + f"\n\n{source_line(cpu)}\n{gpu_line}\n")


def cpu_image(results: dict) -> str:
    cpu = results.get("cpu-speed")
    if cpu is None:
        return missing("cpu-speed", "python benchmarks/cpu_speed.py")
    f = cpu["figures"]
    rows = [[VARIANT_NAMES.get(r["variant"], r["variant"]), r["dtype"], f"{r['seconds']:.2f}",
             f"{min(r['times']):.2f}–{max(r['times']):.2f}", f"{r['peak_rss_gib']:.2f}"] for r in f["image"].values()]
    for variant, pair in f["interleaved"].items():
        rows.append([f"in turn in one process: {VARIANT_NAMES[variant]} / release structure",
                     f"{pair['ours']['dtype']} / {pair['release']['dtype']}",
                     f"{pair['ours']['seconds']:.2f} / {pair['release']['seconds']:.2f}",
                     "ratio by round " + ", ".join(f"{x:.3f}" for x in pair["ours"]["round_ratios"]), ""])
    return (_table(["variant", "dtype", "median s per image", "min–max s", "peak RSS GiB (run)"], rows)
            + f"\n\n{source_line(cpu)}\n")


def cpu_stages(results: dict) -> str:
    cpu = results.get("cpu-speed")
    if cpu is None:
        return missing("cpu-speed", "python benchmarks/cpu_speed.py")
    rows = [[STAGE_NAMES.get(stage, stage), f"{r['auto_s']:.2f}", f"{r['fp32_s']:.2f}", f"{r['ratio']:.2f}"]
            for stage, r in cpu["figures"]["stage_ratios"].items()]
    quality = [f"{variant}: PSNR {q['psnr_db']:.1f} dB, mean |Δ| {q['mean_abs']:.1e}, max |Δ| {q['max_abs']:.2f}"
               for variant, q in cpu["figures"]["quality"].items()]
    text = _table(["stage (one 512² output)", "auto s", "fp32 s", "auto / fp32"], rows)
    if quality:
        text += "\n\nauto against fp32 on the same random model, [0, 1] scale: " + "; ".join(quality) + "."
    return text + f"\n\n{source_line(cpu)}\n"


def cpu_process(results: dict) -> str:
    cpu = results.get("cpu-speed")
    if cpu is None:
        return missing("cpu-speed", "python benchmarks/cpu_speed.py")
    process = {k: v for k, v in cpu["figures"]["process"].items() if k != "files_gib"}
    rows = [[name, f"{r['seconds']:.1f} ({min(r['times']):.1f}–{max(r['times']):.1f})", f"{r['peak_rss_gib']:.2f}",
             f"{r['first_run']['seconds']:.1f}", f"`{r['summary']}`" if r["summary"] else "–"]
            for name, r in process.items()]
    if not rows:
        return "The whole-process part was not run (`--skip process`).\n"
    return (_table(["process", "wall s, median (min–max)", "peak RSS GiB", "first run s (fills the caches)",
                    "its summary line (last round)"], rows) + f"\n\n{source_line(cpu)}\n")


def cpu_targets(results: dict) -> str:
    cpu = results.get("cpu-speed")
    if cpu is None:
        return missing("cpu-speed", "python benchmarks/cpu_speed.py")
    rows = [[t["target"], _s(t["value"], 3), t["bound"],
             "not run" if t["pass"] is None else ("pass" if t["pass"] else "**fail**")]
            for t in cpu["figures"]["targets"]]
    return _table(["target", "measured", "bound", ""], rows) + f"\n\n{source_line(cpu)}\n"


def flops(results: dict) -> str:
    """GFLOP per stage (counted on the meta device) and the share of the measured matrix
    throughput each stage reaches in the newest CPU run (auto and fp32)."""
    counted, cpu = results.get("flops"), results.get("cpu-speed")
    if counted is None:
        return missing("flops", "python benchmarks/flops.py")
    image = cpu["figures"]["image"] if cpu else {}
    # the machine's throughput: the better of the probes before and after the run
    probes = list(cpu["probe_gflops"].values()) if cpu else []
    probe = {dtype: max(p[dtype] for p in probes) for dtype in (probes[0] if probes else {})}
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
            rate = gflop / measured["seconds"]
            share = f" ({rate / probe[run['dtype']]:.0%})" if run["dtype"] in probe else ""
            row += [f"{measured['seconds']:.2f}", f"{rate:.0f}{share}"]
        rows.append(row)
    text = _table(header, rows) + (f"\n\nCounted: *{counted['date'][:10]}, commit `{counted['commit']}`, torch "
                                   f"{counted['machine']['torch']}. Data: `benchmarks/results/{counted['file']}`.*")
    if cpu:
        text += f"\nTimed: {source_line(cpu)}"
    return text + "\n"


def memory(device: str):
    def render(results: dict) -> str:
        runs = load_runs().get(f"memory-{device}")
        if not runs:
            return missing(f"memory-{device}", f"python benchmarks/memory.py --device {device}")
        rows, sources = [], []
        for run, r in memory_rows(runs):
            s = r["stages"]
            tiles = " / ".join("whole image" if s[k]["vae_tile"] >= r["output"] else str(s[k]["vae_tile"])
                               for k in ("encode", "decode"))
            gpu = [f"{r['peak_gpu_gib']:.2f}"] if "peak_gpu_gib" in r else []
            rows.append([f"{r['output']}²", r["dtype"], tiles, f"{r['peak_rss_gib']:.2f}", *gpu, f"{r['seconds']:.1f}",
                         " / ".join(f"{s[k]['seconds']:.1f}" for k in ("encode", "unet", "decode"))])
            shown = next((entry for entry in sources if entry[0] is run), None)
            if shown is None:
                sources.append((run, [r["output"]]))
            else:
                shown[1].append(r["output"])
        header = ["output (input ×4)", "dtype", "VAE tile (encode / decode)", "peak RSS GiB"]
        header += ["peak GPU GiB"] if rows and len(rows[0]) == 7 else []
        header += ["total s", "encode / UNet / decode s"]
        lines = "\n\n".join(f"{', '.join(f'{size}²' for size in sizes)}: {source_line(run)}" for run, sizes in sources)
        return _table(header, rows) + f"\n\n{lines}\n"
    return render


def per_device(benchmark: str, script: str):
    """A region per device from the newest run of `benchmark`-<device> (rendered by the decorated
    function), or how to make one."""
    def decorate(body):
        def for_device(device: str):
            def render(results: dict) -> str:
                run = results.get(f"{benchmark}-{device}")
                if run is None:
                    return missing(f"{benchmark}-{device}", f"python benchmarks/{script} --device {device}")
                return body(run)
            return render
        return for_device
    return decorate


@per_device("vae-tiles", "vae_tiles.py")
def vae_tiles(run: dict) -> str:
    f = run["figures"]
    rows = [["untiled (reference)", "–", "–", f"{r['encode_s']:.1f}", f"{r['decode_s']:.1f}"]
            if r["tile"] == "untiled" else
            [f"{r['tile']} px", f"{100 * r['encode_mean_of_std']:.4f} / {100 * r['encode_max_of_std']:.4f}",
             f"{r['decode_mean_levels']:.4f} / {r['decode_max_levels']:.4f}", f"{r['encode_s']:.1f}",
             f"{r['decode_s']:.1f}"] for r in f["rows"]]
    header = ["VAE tile", "encode: mean / max abs diff, % of latent std", "decode: mean / max abs diff, 8-bit levels",
              "encode s", "decode s"]
    return (f"{f['size']}² image, {f['dtype']}:\n\n" + _table(header, rows)
            + f"\n\n{source_line(run)}\n")


@per_device("vae-tile-speed", "vae_tile_speed.py")
def vae_tile_speed(run: dict) -> str:
    f = run["figures"]
    rows = [[f"auto ({r['encode_auto_tile']} / {r['decode_auto_tile']})" if r["tile"] == "auto"
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
            + f"\n\nauto / fastest fixed tile: {ratios}.\n\n{source_line(run)}\n")


def gpu_speed(results: dict) -> str:
    run = results.get("speed-cuda")
    if run is None:
        return missing("speed-cuda", "bash benchmarks/gpu.sh")
    rows = [[r["variant"], r["dtype"], f"{r['seconds'] * 1000:.1f}", _s(r.get("peak_gpu_gib"))]
            for r in run["figures"]["results"]]
    return _table(["variant", "dtype", "median ms per image", "peak GPU GiB"], rows) + f"\n\n{source_line(run)}\n"


def decoder_speed(device: str):
    def render(results: dict) -> str:
        run = results.get(f"decoder-speed-{device}")
        if run is None:
            return missing(f"decoder-speed-{device}", f"python benchmarks/decoder_speed.py --device {device}")
        f = run["figures"]
        by = {(r["decoder"], r["job"]): r for r in f["results"]}
        rows = []
        for job, ratio in f["fast_over_vae"].items():
            vae, fast = by[("vae", job)], by[("fast", job)]
            name = (f"whole default upscale ({f['whole_input']}² → {4 * f['whole_input']}²)" if job == "whole"
                    else f"decode stage, {job.removeprefix('decode-')}² output")
            memory = [_s(vae.get("peak_rise_gib")), _s(fast.get("peak_rise_gib")), _s(ratio.get("peak_memory"))]
            rows.append([name, vae["dtype"], _s(vae["seconds"], 1), _s(fast["seconds"], 1), _s(ratio["seconds"]),
                         *memory])
        header = ["measurement", "dtype", "VAE decoder s", "fast decoder s", "fast / VAE time",
                  "decode peak rise, VAE GiB", "fast GiB", "fast / VAE memory"]
        return _table(header, rows) + f"\n\n{source_line(run)}\n"
    return render


def image_libraries(results: dict) -> str:
    """docs/images.md: our 16-bit TIFF reader and ICC conversion beside tifffile and ImageCms."""
    run = results.get("image-libraries")
    if run is None:
        return missing("image-libraries", "python benchmarks/image_libraries.py")
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


RENDER = {"summary": summary, "image-libraries": image_libraries, "cpu-image": cpu_image, "cpu-stages": cpu_stages,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
