"""Speed and peak memory of one 128x128 -> 512x512 upscale on the real-size SD2.1-base
architecture (random weights), ours against naive baselines, side by side in one run.

    python benchmarks/speed.py [--device cpu|cuda] [--dtype auto|fp32|bf16|fp16] [--repeats 3]

Each variant runs in its own process, so each peak RSS is its own (cpu_speed.py also times
pairs of variants in turn in one process, `run_interleaved`, for ratios on a drifting machine).
Our full upscales run the pipeline's public stages one by one and report each stage's time. The
release-structure variants always run in fp32 on the CPU (the structure of the authors' release,
tests/release_reference.py).
Prints a table, writes one JSON file per run, benchmarks/results/speed-<device>-<date>.json, and
exits with 1 when any variant failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    Children,
    Probes,
    current_peak_rss_gib,
    lq_image,
    median_stages,
    random_weights,
    reset_peak_rss,
    round_probe,
    run_stages,
    sd21_base,
    sd21_text_encoder,
    sync,
    with_share,
    write_result,
)

VARIANTS = {
    "ours-default": "ours, λ=(1,1): one pass on merged weights",
    "ours-adjustable": "ours, λ=(0.8,1.2): pix and pix+sem as one batch of two",
    "ours-adjustable-sequential": "ours, λ=(0.8,1.2): the two passes one after the other",
    "ours-readjust": "ours: new λ from cached ε (guide + decode + finish)",
    "ours-decode": "ours: VAE decode + finish alone (the floor of a re-adjust)",
    "ours-default-compiled": "ours, λ=(1,1), torch.compile (compile time excluded)",
    "ours-batch8": "ours, λ=(1,1), a batch of 8 images; seconds per image",
    "peft-unmerged-default": "naive: six peft adapters active, unmerged, one pass",
    "release-default": "release structure, default: merged PiSA, prompt encoded per image (fp32)",
    "release-adjustable": "release structure, λ=(0.8,1.2): 3 weight sets swapped, sequential passes (fp32)",
}

OPTIONAL = ("ours-default-compiled", "ours-batch8")  # GPU script; slow and uninformative on a CPU
LQ_SIDE = 128


def _lambdas(variant: str) -> tuple[float, float]:
    return (0.8, 1.2) if "adjustable" in variant else (1.0, 1.0)


def _ours(variant, device, dtype):
    """(run() -> (output, stages or None), images per run) for one of our variants."""
    from pisa_core.inference.guidance import PISA, PIX
    from pisa_core.inference.pipeline import PiSAPipeline

    class SequentialPasses(PiSAPipeline):
        def predict_eps(self, latent, *, need=(PIX, PISA), **options):
            eps = {}
            for branch in need:
                eps.update(super().predict_eps(latent, need=(branch,), **options))
            return eps

    base = sd21_base()
    cls = SequentialPasses if variant == "ours-adjustable-sequential" else PiSAPipeline
    pipe = cls(base, random_weights(base.unet), device=device, dtype=dtype,
               compile=variant == "ours-default-compiled")
    images = lq_image(LQ_SIDE, batch=8 if variant == "ours-batch8" else 1)
    if variant in ("ours-readjust", "ours-decode"):
        with torch.inference_mode():
            pixels, plan = pipe.prepare(images)
            latent = pipe.encode(pixels)
            eps = pipe.predict_eps(latent)  # both branches, as a λ slider has them cached

        def run():
            with torch.inference_mode():
                z = pipe.guide(latent, eps, 0.7, 1.3) if variant == "ours-readjust" else latent
                return pipe.finish(pipe.decode(z), plan), None
        return run, 1
    return (lambda: run_stages(pipe, images, *_lambdas(variant))), len(images)


def _baseline(variant, device, dtype, tmp: Path):
    """(run() -> (output, None), 1) for a naive or release-structure baseline."""
    from PIL import Image
    from pisa_files import write_official_pkl
    from release_reference import ReleaseStyleSR, adain_reference, attach_unmerged

    from pisa_core.model.base import empty_prompt_ids

    base = sd21_base()
    pkl = tmp / "pisa_sr.pkl"
    write_official_pkl(base.unet, pkl)
    text_encoder = sd21_text_encoder()
    lq = lq_image(LQ_SIDE)
    if variant == "peft-unmerged-default":
        attach_unmerged(base.unet, pkl)
        unet, vae = base.unet.to(device, dtype), base.vae.to(device, dtype)
        ids = empty_prompt_ids(text_encoder.config.vocab_size).to(device)
        text_encoder.to(device, dtype)

        @torch.no_grad()
        def run():
            ref = torch.nn.functional.interpolate(lq.permute(0, 3, 1, 2).to(device), scale_factor=4,
                                                  mode="bicubic").clamp(0, 1)
            embeds = text_encoder(ids)[0]
            z = vae.encode((ref * 2 - 1).to(dtype)).latent_dist.mean * 0.18215
            eps = unet(z, torch.tensor([1], device=device), encoder_hidden_states=embeds).sample
            out = (vae.decode((z - eps) / 0.18215).sample.clamp(-1, 1) * 0.5 + 0.5).float()
            return adain_reference(out, ref.float()), None
        return run, 1
    if device.type != "cpu":
        raise SystemExit("the release-structure baseline runs on the CPU (in fp32) only")
    model = ReleaseStyleSR(base.unet, base.vae, text_encoder, None, pkl, default=(variant == "release-default"),
                           lambda_pix=0.8, lambda_sem=1.2)
    image = Image.fromarray((lq[0].numpy() * 255).round().astype("uint8"))
    return (lambda: (model.upscale(image, upscale=4, process_size=512), None)), 1


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _variant_dtype(variant: str, dtype: str, device: torch.device) -> torch.dtype:
    """The release structure always runs in fp32; our variants in `dtype` resolved for `device`."""
    from pisa_core.inference.hardware import resolve_dtype

    return torch.float32 if variant.startswith("release") else resolve_dtype(dtype, device)


def _build(variant: str, device: torch.device, dtype: torch.dtype, tmp: Path):
    """(run() -> (output, stages or None), images per run) for any variant; a baseline writes its
    weight file into `tmp`."""
    return _ours(variant, device, dtype) if variant.startswith("ours") else _baseline(variant, device, dtype, tmp)


def _timed(run, device: torch.device):
    """(seconds, what run() returned), the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = run()
    sync(device)
    return time.perf_counter() - start, result


def run_variant(variant: str, device: str, dtype: str, repeats: int, save_output: str | None = None) -> dict:
    """One variant in this process: a warm-up, then `repeats` timed runs (median), each after a
    matrix-product probe in the variant's dtype; stage times for our full upscales; peak RSS of
    the timed runs (loading excluded) and of loading."""
    from pisa_core.options import dtype_name

    device = torch.device(device)
    dtype_t = _variant_dtype(variant, dtype, device)
    with tempfile.TemporaryDirectory() as tmp:
        run, images = _build(variant, device, dtype_t, Path(tmp))
        load_peak = current_peak_rss_gib()
        output, _ = run()  # warm-up
        reset_peak_rss()  # (a probe's 2048² matrices stay far below a run's peak)
        times, stage_runs, probes = [], [], []
        for _ in range(repeats):
            probes.append(round_probe([dtype_name(dtype_t)], str(device)))
            seconds, (output, stages) = _timed(run, device)
            times.append(seconds)
            if stages is not None:
                stage_runs.append(stages)
    result = {"variant": variant, "seconds": statistics.median(times) / images, "times": [t / images for t in times],
              "probes": probes, "peak_rss_gib": current_peak_rss_gib(), "load_peak_rss_gib": load_peak,
              "device_name": _device_name(device), "dtype": dtype_name(dtype_t)}
    if stage_runs:
        result["stages"] = median_stages(stage_runs)
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if save_output:
        torch.save(output.float().cpu(), save_output)
    return result


def run_interleaved(specs: list[tuple[str, str]], device: str, rounds: int) -> dict:
    """Several variants in this process, (variant, dtype) each, timed in turn (a, b, a, b, ...)
    after one warm-up each: on a machine whose speed drifts from one minute to the next (a shared
    virtual machine) both sides of a ratio then run under the same conditions. Each round starts
    with a matrix-product probe in every dtype the round times. Per variant the median seconds,
    the times and the round probes; per round the ratio of each variant to the last one."""
    from pisa_core.options import dtype_name

    device_t = torch.device(device)
    runs, found = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, dtype in specs:
            name = f"{variant}@{dtype}"
            dtype_t = _variant_dtype(variant, dtype, device_t)
            (Path(tmp) / name).mkdir()
            runs[name], _ = _build(variant, device_t, dtype_t, Path(tmp) / name)
            found[name] = {"variant": variant, "dtype": dtype_name(dtype_t), "times": [], "probes": []}
        for run in runs.values():
            run()  # warm-up
        for _ in range(rounds):
            probe = round_probe([r["dtype"] for r in found.values()], device)
            for name, run in runs.items():
                found[name]["probes"].append(probe)
                found[name]["times"].append(_timed(run, device_t)[0])
    last = found[list(found)[-1]]["times"]
    for r in found.values():
        r["seconds"] = statistics.median(r["times"])
        r["round_ratios"] = [t / u for t, u in zip(r["times"], last)]
        r["median_ratio"] = statistics.median(r["round_ratios"])
    return found


def interleaved_command(specs: list[tuple[str, str]], device: str, rounds: int) -> list:
    """The command that measures variants interleaved in one process (its last stdout line is JSON)."""
    return [sys.executable, __file__, "--interleave", *(f"{v}@{d}" for v, d in specs), "--device", device,
            "--repeats", str(rounds)]


def variant_command(variant: str, device: str, dtype: str, repeats: int, save_output: str | None = None) -> list:
    """The command that measures one variant in its own process (its last stdout line is JSON)."""
    cmd = [sys.executable, __file__, "--variant", variant, "--device", device, "--dtype", dtype,
           "--repeats", str(repeats)]
    return cmd + (["--save-output", save_output] if save_output else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="our variants' dtype (release structure: always fp32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/speed-<device>-<date>.json)")
    parser.add_argument("--variants", nargs="*", default=[v for v in VARIANTS if v not in OPTIONAL],
                        choices=list(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--save-output", help=argparse.SUPPRESS)  # the child saves its output tensor here
    parser.add_argument("--interleave", nargs="+", help=argparse.SUPPRESS)  # child: variant@dtype ... in turn
    args = parser.parse_args()
    if args.interleave:
        specs = [tuple(spec.rsplit("@", 1)) for spec in args.interleave]
        print(json.dumps(run_interleaved(specs, args.device, args.repeats)))
        return 0
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.device, args.dtype, args.repeats, args.save_output)))
        return 0
    from flops import upscale_gflop, variant_gflop

    children = Children()
    results = []
    probes, counted = Probes(args.device), upscale_gflop(LQ_SIDE)
    probes.take("before")
    for variant in args.variants:
        r = children.run(variant, variant_command(variant, args.device, args.dtype, args.repeats))
        if r is not None:
            probes.add_rounds(variant, r)
            results.append(with_share(r, variant_gflop(counted, variant)))
            print(f"{variant:28s} {r['seconds']:8.3f} s   peak RSS {r['peak_rss_gib']:5.2f} GiB", flush=True)
    probes.take("after")
    report(results, args, probes, children.failed)
    return children.exit_code()


def report(results: list[dict], args, probe: dict, failed: dict) -> None:
    by = {r["variant"]: r for r in results}

    def ratio(a, b):
        return by[a]["seconds"] / by[b]["seconds"] if a in by and b in by else None

    ratios = {
        "default / peft-unmerged-default": ratio("ours-default", "peft-unmerged-default"),
        "default / release-default": ratio("ours-default", "release-default"),
        "adjustable / release-adjustable": ratio("ours-adjustable", "release-adjustable"),
        "adjustable batched / sequential": ratio("ours-adjustable", "ours-adjustable-sequential"),
        "readjust / default": ratio("ours-readjust", "ours-default"),
        "readjust - decode (s)": (by["ours-readjust"]["seconds"] - by["ours-decode"]["seconds"]
                                  if "ours-readjust" in by and "ours-decode" in by else None),
        "compiled / eager default": ratio("ours-default-compiled", "ours-default"),
    }
    print("\n| variant | what | dtype | median s | peak RSS GiB (run) |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {VARIANTS[r['variant']]} | {r['dtype']} | {r['seconds']:.3f} | "
              f"{r['peak_rss_gib']:.2f} |")
    print("\n| ratio | value |\n|---|---|")
    for name, value in ratios.items():
        if value is not None:
            print(f"| {name} | {value:.2f} |")
    meta = {"device": args.device, "dtype": args.dtype, "repeats": args.repeats, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    path = write_result(f"speed-{torch.device(args.device).type}", {"meta": meta, "results": results, "ratios": ratios,
                                                                    "failed": failed},
                        device=args.device, probe=probe, out=args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
