"""The CPU targets (issue 9, items 4 and 5), measured side by side in one run on the real-size
SD2.1-base architecture with random weights, 128² -> 512²:

    python benchmarks/cpu_speed.py [--repeats 3] [--skip pairs image process ops] [--pairs ours-default ...]
                                   [--model-dir DIR] [--quick]

  pairs    first the per-image targets: ours (auto) and the release structure (fp32) in one
           process, timed in turn (ours, release, ours, ...) for --repeats rounds after a warm-up
           each, a matrix-product probe in both dtypes before each round; the target is the
           median of the per-round ratios, so that a machine whose speed drifts (a shared virtual
           machine) slows both sides alike
  image    per-image time and peak RSS of ours (dtype auto, and fp32; the stages one by one), each variant in its own
           process (speed.py); bf16/fp32 per stage; the quality guard: PSNR of the auto (bf16)
           output against the fp32 output on the same random model, at least 35 dB on [0, 1]
  process  whole processes, start to written file: `pisa-sr upscale` with the single-file
           .safetensors checkpoint and the official-layout .pkl, in bf16 (auto) and fp32, against
           release_process.py (diffusers folder, from_pretrained in fp32, text encoder and
           tokenizer). Each once to fill the empty-prompt cache (a temporary PISA_SR_CACHE_DIR)
           and the page cache, then --repeats rounds of all three in turn; wall time (median, and
           the ratio per round) and the process's own peak RSS. The model files are written once
           to --model-dir.
  ops      torch.profiler per stage in bf16 and in fp32: the ops that take longer in bf16

Prints the tables (markdown), the targets with PASS/FAIL, the machine (CPU features, torch, date,
load averages and matmul GFLOP/s before and after) and writes one JSON file per run,
benchmarks/results/cpu-speed-<date>.json (`python benchmarks/report.py` makes the docs' tables from it).
Exit code: 1 when a measurement failed, 2 when a target failed (the quality guard included), else
0. --quick runs everything on the tests' tiny models (PISA_BENCH_TINY=1): a smoke test, figures
meaningless.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import speed
import torch
from common import Children, Probes, load_average, lq_image, machine_info, measure_process, with_share, write_result
from flops import upscale_gflop, variant_gflop
from quiet import gate

HERE = Path(__file__).resolve().parent
PARTS = ("pairs", "image", "process", "ops")
MIN_PSNR_DB = 35.0

# (variant of speed.py, our dtype), each in its own process: stage times, peak RSS, outputs
IMAGE_RUNS = (("ours-default", "auto"), ("ours-adjustable", "auto"), ("ours-readjust", "auto"),
              ("ours-decode", "auto"), ("ours-default", "fp32"), ("ours-adjustable", "fp32"))
# the per-image targets: ours (auto) and the release structure (always fp32) timed in turn in one
# process, so that a machine whose speed drifts slows both sides of the ratio alike
TARGET_PAIRS = (("ours-default", "release-default"), ("ours-adjustable", "release-adjustable"))
QUALITY_VARIANTS = ("ours-default", "ours-adjustable")
STAGES = ("encode", "unet", "decode")

# ops profiled per stage: (stage, how the stage is called); the tiled ones exercise the tile loops
OPS_STAGES = {"encode": {}, "unet": {"need": ("pisa",)}, "unet-adjustable": {"need": ("pix", "pisa")},
              "unet-tiled": {"need": ("pisa",), "latent_tile": 48, "latent_overlap": 16},
              "decode": {}, "decode-tiled": {"vae_tile": 256}}
OPS_MIN_MS, OPS_MIN_RATIO = 2.0, 1.1  # an op counts as slower in bf16 above both
COPY_OPS = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy")

SUMMARY = re.compile(r"(\d+) images? written, ([\d.]+) s per image, model loaded in ([\d.]+) s \(([^)]*)\)")


def label(variant: str, dtype: str) -> str:
    return f"{variant}@{dtype}"


# ------------------------------------------------------------------------------ per image


def per_image(children: Children, repeats: int, work: Path, probes: Probes, counted: dict) -> dict:
    """speed.py's variants, each in its own process (a probe before each round), each with its
    share of the probe; our default/adjustable runs save their output."""
    results: dict = {}
    for variant, dtype in IMAGE_RUNS:
        name = label(variant, dtype)
        save = str(work / f"{name}.pt") if variant in QUALITY_VARIANTS else None
        r = children.run(name, speed.variant_command(variant, "cpu", dtype, repeats, save_output=save))
        if r is not None:
            probes.add_rounds(name, r)
            r = with_share({**r, "output_file": save}, variant_gflop(counted, variant))
            results[name] = r
            print(f"  {name:28s} {r['dtype']:5s} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_gib']:5.2f} GiB",
                  flush=True)
    return results


def interleaved(children: Children, rounds: int, probes: Probes, counted: dict,
                pairs: tuple[str, ...] = tuple(ours for ours, _ in TARGET_PAIRS)) -> dict:
    """Per target pair (`pairs`: our variants), ours (auto) and the release structure (fp32) in
    turn in one process, a probe in both dtypes before each round; each side with its share of
    the probe."""
    found = {}
    for ours, release in (pair for pair in TARGET_PAIRS if pair[0] in pairs):
        specs = [(ours, "auto"), (release, "fp32")]
        r = children.run(f"{ours} / {release}", speed.interleaved_command(specs, "cpu", rounds))
        if r is not None:
            probes.add_rounds(f"{ours} / {release}", r[label(*specs[0])])
            found[ours] = {side: with_share(r[label(*spec)], variant_gflop(counted, spec[0]))
                           for side, spec in zip(("ours", "release"), specs)}
            print(f"  {ours:20s} {found[ours]['ours']['seconds']:6.2f} s / {release} "
                  f"{found[ours]['release']['seconds']:6.2f} s  ratio by round "
                  f"{', '.join(f'{x:.3f}' for x in found[ours]['ours']['round_ratios'])}", flush=True)
    return found


def stage_ratios(image: dict) -> dict:
    """bf16 (auto) / fp32 seconds per stage of the default run, and of the adjustable UNet."""
    ratios = {}
    for variant, stages in (("ours-default", STAGES), ("ours-adjustable", ("unet",))):
        auto, fp32 = image.get(label(variant, "auto")), image.get(label(variant, "fp32"))
        if auto is None or fp32 is None:
            continue
        for stage in stages:
            a, f = auto["stages"][stage]["seconds"], fp32["stages"][stage]["seconds"]
            key = stage if variant == "ours-default" else f"{stage} (adjustable)"
            ratios[key] = {"auto_s": a, "fp32_s": f, "ratio": a / f}
    return ratios


def quality(image: dict) -> dict:
    """The auto-dtype output against the fp32 output of the same random model, on [0, 1]."""
    found = {}
    for variant in QUALITY_VARIANTS:
        auto, fp32 = image.get(label(variant, "auto")), image.get(label(variant, "fp32"))
        if auto is None or fp32 is None:
            continue
        a, f = torch.load(auto["output_file"]), torch.load(fp32["output_file"])
        diff = (a - f).abs()
        mse = float(diff.pow(2).mean())
        found[variant] = {"dtype": auto["dtype"], "psnr_db": 10 * math.log10(1 / mse) if mse > 0 else math.inf,
                          "mean_abs": float(diff.mean()), "max_abs": float(diff.max())}
    return found


# ------------------------------------------------------------------------------ whole process


def write_models(folder: Path) -> None:
    """Child process: the random-weight model on disk, once: a diffusers folder (with a synthetic
    CLIP tokenizer of the text encoder's vocabulary size), the single-file LDM .safetensors, the
    official-layout .pkl, and a 128² input PNG."""
    from common import sd21_text_encoder, sd21_unet, sd21_vae
    from model_files import write_diffusers_folder, write_single_file
    from PIL import Image
    from pisa_files import write_official_pkl

    paths = model_paths(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet, vae, text_encoder = sd21_unet(), sd21_vae(), sd21_text_encoder()
    write_diffusers_folder(paths["folder"], unet, vae, text_encoder)
    write_single_file(paths["single"], unet, vae, text_encoder)
    write_official_pkl(unet, paths["pkl"])
    lq = (lq_image(speed.LQ_SIDE)[0].numpy() * 255).round().astype("uint8")
    Image.fromarray(lq).save(paths["input"])
    paths["done"].write_text("complete\n")


def model_paths(folder: Path) -> dict[str, Path]:
    return {"folder": folder / "sd21-base", "single": folder / "v2-1_512-random.safetensors",
            "pkl": folder / "pisa_sr.pkl", "input": folder / "lq.png", "done": folder / "complete"}


def _pisa_sr() -> list[str]:
    """The `pisa-sr` console script of this Python (else the module)."""
    script = shutil.which("pisa-sr", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "pisa_core"]


def process_commands(paths: dict) -> dict:
    """name -> command for an output file; the output differs per run (the CLI keeps existing files)."""
    def ours(*extra):
        return lambda target: [*_pisa_sr(), "upscale", str(paths["input"]), "-o", str(target), "--base",
                               str(paths["single"]), "--weights", str(paths["pkl"]), "--device", "cpu", *extra]
    return {"ours": ours(), "ours-fp32": ours("--dtype", "fp32"),
            "release": lambda target: [sys.executable, str(HERE / "release_process.py"), str(paths["folder"]),
                                       str(paths["pkl"]), str(paths["input"]), str(target)]}


def whole_process(children: Children, model_dir: Path, work: Path, rounds: int, probes: Probes) -> dict:
    """Each process once to fill the prompt cache and the page cache, then `rounds` rounds of all
    of them in turn (ours, ours in fp32, release, ours, ...), a probe in both dtypes before each
    round, measured: per process the median wall time, the largest peak RSS and each round's probe,
    and for ours the ratio to the release structure per round."""
    paths = model_paths(model_dir)
    if not paths["done"].exists():
        print(f"  writing the random-weight model files to {model_dir} (once)", flush=True)
        if children.run("write-models", [sys.executable, __file__, "--write-models", str(model_dir)]) is None:
            return {}
    env = {**os.environ, "PISA_SR_CACHE_DIR": str(work / "prompt-cache")}
    commands = process_commands(paths)
    runs: dict[str, list] = {name: [] for name in commands}
    for attempt in range(rounds + 1):
        reading = probes.take(f"process round {attempt}") if attempt else None
        for name, command in commands.items():
            if len(runs[name]) < attempt:
                continue  # failed before
            target = work / f"{name}-{attempt}.png"
            r = measure_process(command(target), env)
            if r["returncode"] != 0 or not target.exists():
                children.fail(f"process {name}", f"exit code {r['returncode']}\n{r['stderr'][-3000:]}")
                continue
            summary = SUMMARY.search(r["stdout"] + r["stderr"])
            runs[name].append({"seconds": r["seconds"], "peak_rss_gib": r["peak_rss_gib"],
                               "load_average": r["load_average"], "probe": reading,
                               "summary": summary.group(0) if summary else None,
                               "per_image_s": float(summary[2]) if summary else None,
                               "load_s": float(summary[3]) if summary else None})
            print(f"  {'first run' if attempt == 0 else f'round {attempt}':9s} {name:10s} {r['seconds']:7.2f} s  "
                  f"peak RSS {r['peak_rss_gib']:5.2f} GiB  {runs[name][-1]['summary'] or ''}", flush=True)
    results: dict = {}
    for name, found in runs.items():
        if len(found) == rounds + 1:
            measured = found[1:]
            results[name] = {"seconds": statistics.median(r["seconds"] for r in measured),
                             "times": [r["seconds"] for r in measured],
                             "peak_rss_gib": max(r["peak_rss_gib"] for r in measured),
                             "probes": [r["probe"] for r in measured],
                             "summary": measured[-1]["summary"], "rounds": measured, "first_run": found[0]}
    if "ours" in results and "release" in results:
        ratios = [a / b for a, b in zip(results["ours"]["times"], results["release"]["times"])]
        results["ours"]["round_ratios"], results["ours"]["median_ratio"] = ratios, statistics.median(ratios)
    results["files_gib"] = {k: _size_gib(paths[k]) for k in ("folder", "single", "pkl")}
    return results


def _size_gib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**30


# ------------------------------------------------------------------------------ ops slower in bf16


def profile_ops(dtype: str) -> dict:
    """Child process: each stage of OPS_STAGES once to warm up, then once under torch.profiler;
    self CPU time per (op, where a copy comes from, input shapes)."""
    from common import random_weights, sd21_base
    from torch.profiler import ProfilerActivity, profile

    from pisa_core.inference.pipeline import PiSAPipeline

    base = sd21_base()
    pipe = PiSAPipeline(base, random_weights(base.unet), device="cpu", dtype=dtype)
    found = {"dtype": str(pipe.dtype), "channels_last": pipe.channels_last, "stages": {}}
    with torch.inference_mode():
        pixels, _ = pipe.prepare(lq_image(speed.LQ_SIDE))
        latent = pipe.encode(pixels)
        z_high = pipe.guide(latent, pipe.predict_eps(latent, need=("pisa",)))
        calls = {"encode": functools.partial(pipe.encode, pixels), "unet": functools.partial(pipe.predict_eps, latent),
                 "decode": functools.partial(pipe.decode, z_high)}
        for stage, options in OPS_STAGES.items():
            run = functools.partial(calls[stage.split("-")[0]], **options)
            run()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                start = time.perf_counter()
                run()
                wall = time.perf_counter() - start
            found["stages"][stage] = {"wall_s": wall, "ops": _op_rows(prof.events())}
    return found


def _op_rows(events) -> list:
    """[op, via, input shapes, self ms, calls] summed over events; `via` names the op a copy was
    made for (a layout or dtype conversion inside a convolution, a matmul, ...)."""
    rows: dict = {}
    for e in events:
        via = ""
        if e.name in COPY_OPS:
            parent = e.cpu_parent
            while parent is not None and parent.name in COPY_OPS:
                parent = parent.cpu_parent
            via = parent.name if parent is not None else ""
        key = (e.name, via, str(e.input_shapes))
        ms, calls = rows.get(key, (0.0, 0))
        rows[key] = (ms + e.self_cpu_time_total / 1000, calls + 1)
    return [[*key, ms, calls] for key, (ms, calls) in rows.items() if ms >= 0.1]


def _totals(ops: list, by_shape: bool) -> dict:
    totals: dict = {}
    for name, via, shapes, ms, count in ops:
        key = (name, via, shapes if by_shape else "")
        ms0, count0 = totals.get(key, (0.0, 0))
        totals[key] = (ms0 + ms, count0 + count)
    return totals


def slower_in_bf16(bf16: dict, fp32: dict, by_shape: bool) -> list[dict]:
    """Ops whose self time in bf16 exceeds their fp32 time by OPS_MIN_MS and OPS_MIN_RATIO, per
    stage (an op found only in bf16, e.g. a layout conversion, counts against bf16)."""
    rows = []
    for stage, found in bf16["stages"].items():
        reference = _totals(fp32["stages"].get(stage, {}).get("ops", []), by_shape)
        for (name, via, shapes), (ms, count) in _totals(found["ops"], by_shape).items():
            ms32 = reference.get((name, via, shapes), (0.0, 0))[0]
            if ms - ms32 >= OPS_MIN_MS and ms >= OPS_MIN_RATIO * ms32:
                rows.append({"stage": stage, "op": name, "via": via, "input_shapes": shapes, "calls": count,
                             "bf16_ms": ms, "fp32_ms": ms32})
    return sorted(rows, key=lambda r: r["bf16_ms"] - r["fp32_ms"], reverse=True)


def ops(children: Children, probes: Probes) -> dict:
    """Each dtype's profile in its own process, a probe in that dtype before it."""
    found = {}
    for dtype in ("bf16", "fp32"):
        probes.take(f"ops {dtype}", [dtype])
        r = children.run(f"ops {dtype}", [sys.executable, __file__, "--ops-child", dtype])
        if r is None:
            return {}
        found[dtype] = r
    return {"stage_wall_s": {s: {d: found[d]["stages"][s]["wall_s"] for d in found} for s in OPS_STAGES},
            "slower_by_op": slower_in_bf16(found["bf16"], found["fp32"], by_shape=False),
            "slower_by_shape": slower_in_bf16(found["bf16"], found["fp32"], by_shape=True)[:25]}


# ------------------------------------------------------------------------------ targets and report


def targets(paired: dict, process: dict, checks: dict) -> list[dict]:
    """Each target: the measured ratio (median over the interleaved rounds) or PSNR against its bound."""
    def median_ratio(found):
        return found.get("median_ratio") if found else None

    ours = process.get("ours", {})
    rss = ours.get("peak_rss_gib"), process.get("release", {}).get("peak_rss_gib")
    rows = [
        ("per image, λ=(1,1): ours auto / release fp32",
         median_ratio(paired.get("ours-default", {}).get("ours")), "<=", 0.25),
        ("per image, λ=(0.8,1.2): ours auto / release fp32",
         median_ratio(paired.get("ours-adjustable", {}).get("ours")), "<=", 0.22),
        ("whole process (cached prompt): ours auto / release fp32", median_ratio(ours), "<=", 0.45),
        ("whole process peak RSS: ours auto / release fp32",
         rss[0] / rss[1] if None not in rss else None, "<=", 0.35),
    ]
    rows += [(f"PSNR auto vs fp32, {v} (dB)", q["psnr_db"], ">=", MIN_PSNR_DB) for v, q in checks.items()]
    return [{"target": what, "value": value, "bound": f"{op} {bound:g}",
             "pass": None if value is None else (value <= bound if op == "<=" else value >= bound)}
            for what, value, op, bound in rows]


def _op_label(row: dict) -> str:
    """An op's name; a copy names the op it was made for."""
    return f"{row['op']} for {row['via']}" if row["via"] else row["op"]


def report(data: dict, m: dict, probe: dict) -> None:
    verdict = gate(probe)
    print(f"\n{m['cpu_model']} ({m['matrix_features']}), {m['cores']} cores, {m['logical_cpus']} logical CPUs, "
          f"torch {m['torch']} ({m['threads']} threads), capability {m['cpu_capability']}, {m['date']}; load average "
          f"before {data['load_before']}, after {data['load_after']}; matmul GFLOP/s before {probe['before']}, after "
          f"{probe['after']}; {verdict['readings']} probes spread {verdict['probe_spread']:.0%}: "
          f"{'NOISY (the docs refuse this run)' if verdict['noisy'] else 'quiet'}")
    image = data["image"]
    if image:
        print("\n| variant | dtype | median s per image | min–max s | probe GFLOP/s | share | peak RSS GiB (run) |"
              "\n|---|---|---|---|---|---|---|")
        for name, r in image.items():
            print(f"| {name} | {r['dtype']} | {r['seconds']:.2f} | {min(r['times']):.2f}–{max(r['times']):.2f} | "
                  f"{r.get('probe', '-')} | {r['share']:.0%} | {r['peak_rss_gib']:.2f} |" if "share" in r else
                  f"| {name} | {r['dtype']} | {r['seconds']:.2f} | – | – | – | {r['peak_rss_gib']:.2f} |")
    if data["interleaved"]:
        print("\n| interleaved in one process | ours auto s (median) | release fp32 s (median) | ours / release, "
              "round by round | median |\n|---|---|---|---|---|")
        for variant, r in data["interleaved"].items():
            print(f"| {variant} | {r['ours']['seconds']:.2f} | {r['release']['seconds']:.2f} | "
                  f"{', '.join(f'{x:.3f}' for x in r['ours']['round_ratios'])} | {r['ours']['median_ratio']:.3f} |")
    if data["stage_ratios"]:
        print("\n| stage | auto s | fp32 s | auto / fp32 |\n|---|---|---|---|")
        for stage, r in data["stage_ratios"].items():
            print(f"| {stage} | {r['auto_s']:.2f} | {r['fp32_s']:.2f} | {r['ratio']:.2f} |")
    for variant, q in data["quality"].items():
        print(f"\nquality {variant}: {q['dtype']} vs fp32 PSNR {q['psnr_db']:.1f} dB, mean |Δ| {q['mean_abs']:.2e}, "
              f"max |Δ| {q['max_abs']:.2e}")
    process = {k: v for k, v in data["process"].items() if k != "files_gib"}
    if process:
        print("\n| process | wall s, median of the rounds (min–max) | peak RSS GiB | first run s | "
              "CLI summary (last round) |\n|---|---|---|---|---|")
        for name, r in process.items():
            print(f"| {name} | {r['seconds']:.2f} ({min(r['times']):.2f}–{max(r['times']):.2f}) | "
                  f"{r['peak_rss_gib']:.2f} | {r['first_run']['seconds']:.2f} | {r['summary'] or '-'} |")
    if data["ops"]:
        print("\n| profiled stage | bf16 s | fp32 s |\n|---|---|---|")
        for stage, walls in data["ops"]["stage_wall_s"].items():
            print(f"| {stage} | {walls['bf16']:.2f} | {walls['fp32']:.2f} |")
        print("\nops slower in bf16 than in fp32 (self CPU ms, per stage):")
        print("| stage | op (copies: for which op) | calls | bf16 ms | fp32 ms |\n|---|---|---|---|---|")
        for r in data["ops"]["slower_by_op"][:20]:
            print(f"| {r['stage']} | {_op_label(r)} | {r['calls']} | {r['bf16_ms']:.1f} | {r['fp32_ms']:.1f} |")
        print("\nthe same by input shapes (largest 12):")
        for r in data["ops"]["slower_by_shape"][:12]:
            print(f"  {r['stage']:15s} {_op_label(r)[:48]:48s} {r['input_shapes'][:60]:60s} bf16 {r['bf16_ms']:7.1f} "
                  f"fp32 {r['fp32_ms']:7.1f}")
    print("\n| target | measured | bound | |\n|---|---|---|---|")
    for t in data["targets"]:
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"| {t['target']} | {value} | {t['bound']} | {verdict} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per variant after one warm-up; rounds of the interleaved measurements")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--pairs", nargs="+", default=[ours for ours, _ in TARGET_PAIRS],
                        choices=[ours for ours, _ in TARGET_PAIRS], help="the target pairs the pairs part times")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the random-weight model files are written once (default: a folder in $TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="the tests' tiny models: a smoke test in a minute")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/cpu-speed-<date>.json)")
    parser.add_argument("--write-models", type=Path, help=argparse.SUPPRESS)  # child: write the model files
    parser.add_argument("--ops-child", help=argparse.SUPPRESS)  # child: profile the stages in one dtype
    args = parser.parse_args()
    if args.write_models:
        write_models(args.write_models)
        print(json.dumps({"written": str(args.write_models)}))
        return 0
    if args.ops_child:
        print(json.dumps(profile_ops(args.ops_child)))
        return 0
    if args.quick:
        os.environ["PISA_BENCH_TINY"] = "1"  # inherited by every child
    model_dir = args.model_dir or Path(tempfile.gettempdir()) / f"pisa-sr-bench-models{'-tiny' if args.quick else ''}"
    children = Children()
    probes, counted = Probes(), upscale_gflop(speed.LQ_SIDE)
    probes.take("before")
    data = {"load_before": load_average(), "uptime_before": _uptime(),
            "quick": args.quick, "repeats": args.repeats, "image": {}, "interleaved": {}, "stage_ratios": {},
            "quality": {}, "process": {}, "ops": {}}
    with tempfile.TemporaryDirectory(prefix="pisa-sr-bench-") as tmp:
        work = Path(tmp)
        if "pairs" not in args.skip:
            # the target pairs first: they start right after the throughput probe recorded above
            print("per image, ours and the release structure in turn:", flush=True)
            data["interleaved"] = interleaved(children, args.repeats, probes, counted, tuple(args.pairs))
        if "image" not in args.skip:
            print("per image (each variant in its own process):", flush=True)
            data["image"] = per_image(children, args.repeats, work, probes, counted)
            data["stage_ratios"] = stage_ratios(data["image"])
            data["quality"] = quality(data["image"])
        if "process" not in args.skip:
            print("whole process:", flush=True)
            data["process"] = whole_process(children, model_dir, work, args.repeats, probes)
        if "ops" not in args.skip:
            print("ops (torch.profiler, bf16 and fp32):", flush=True)
            data["ops"] = ops(children, probes)
    data["load_after"], data["uptime_after"] = load_average(), _uptime()
    probes.take("after")
    data["gflop"], data["failed"] = counted, children.failed
    data["targets"] = targets(data["interleaved"], data["process"], data["quality"])
    report(data, machine_info(), probes)
    print(f"\nwrote {write_result('cpu-speed', data, probe=probes, out=args.out)}")
    if children.exit_code():
        return 1
    return 2 if any(t["pass"] is False for t in data["targets"]) else 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
