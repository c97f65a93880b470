"""Speed and peak memory of one 128x128 -> 512x512 upscale on the real-size SD2.1-base
architecture (random weights), ours against naive baselines, side by side in one run.

    python benchmarks/speed.py [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--repeats 3]

Each variant runs in its own process, so each peak RSS is its own. Prints a table and writes
benchmarks/results/speed-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import (ROOT, current_peak_rss_gib, median_time, random_weights, reset_peak_rss, sd21_base,
                    sd21_text_encoder)

VARIANTS = {
    "ours-default": "ours, λ=(1,1): one pass on merged weights",
    "ours-adjustable": "ours, λ=(0.8,1.2): pix and pix+sem as one batch of two",
    "ours-adjustable-sequential": "ours, λ=(0.8,1.2): the two passes one after the other",
    "ours-readjust": "ours: new λ from cached ε (combination + decode + colour fix)",
    "ours-decode": "ours: VAE decode + colour fix alone (the floor of a re-adjust)",
    "ours-default-compiled": "ours, λ=(1,1), torch.compile (compile time excluded)",
    "ours-batch8": "ours, λ=(1,1), a batch of 8 images; seconds per image",
    "peft-unmerged-default": "naive: six peft adapters active, unmerged, one pass",
    "release-default": "release structure, default: merged PiSA, prompt encoded per image",
    "release-adjustable": "release structure, λ=(0.8,1.2): 3 weight sets swapped, sequential passes",
}

OPTIONAL = ("ours-default-compiled", "ours-batch8")  # GPU script; slow and uninformative on a CPU


def _lq(device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 32, 32, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(128, 128), mode="bilinear").permute(0, 2, 3, 1)


def _official_pkl(weights, folder: Path) -> Path:
    """The random weights in the release's .pkl layout (for the release-structure baselines)."""
    from pisa_core.lora import module_group

    state = {"state_dict_unet": {}}
    for kind, family in (("pix", weights.pix), ("sem", weights.sem)):
        state[f"lora_rank_unet_{kind}"] = family.rank
        for group in ("encoder", "decoder", "others"):
            state[f"unet_lora_{group}_modules_{kind}"] = [n for n in family.factors if module_group(n) == group]
        for name, (down, up) in family.factors.items():
            adapter = f"default_{module_group(name)}_{kind}"
            state["state_dict_unet"][f"{name}.lora_A.{adapter}.weight"] = down
            state["state_dict_unet"][f"{name}.lora_B.{adapter}.weight"] = up
    path = folder / "pisa_sr.pkl"
    torch.save(state, path)
    return path


def _ours(variant, device, dtype, repeats):
    from pisa_core.guidance import PISA, PIX
    from pisa_core.pipeline import PiSAPipeline

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
    image = _lq(device)
    if variant == "ours-batch8":
        batch = image.repeat(8, 1, 1, 1).to(device)
        return lambda: pipe(batch), 8
    if variant in ("ours-readjust", "ours-decode"):
        from pisa_core.colorfix import apply_color_fix
        from pisa_core.geometry import prepare_exact

        prepared = prepare_exact(image.permute(0, 3, 1, 2).to(device), 4, 512)
        latent = pipe.encode(prepared.pixels)
        eps = pipe.predict_eps(latent)

        def run():
            z = pipe.guided_latent(latent, 0.7, 1.3, eps=eps) if variant == "ours-readjust" else latent
            out = (pipe.decode(z) * 0.5 + 0.5).clamp(0, 1)
            return apply_color_fix(out, prepared.reference, "adain")
        return run, 1
    lambdas = (1.0, 1.0) if variant == "ours-default" else (0.8, 1.2)
    return (lambda: pipe(image.to(device), lambda_pix=lambdas[0], lambda_sem=lambdas[1])), 1


def _baseline(variant, device, dtype, repeats, tmp: Path):
    from PIL import Image

    from release_reference import ReleaseStyleSR, adain_reference, attach_unmerged

    base = sd21_base()
    pkl = _official_pkl(random_weights(base.unet), tmp)
    text_encoder = sd21_text_encoder()
    lq = Image.fromarray((_lq("cpu")[0].numpy() * 255).round().astype("uint8"))
    if variant == "peft-unmerged-default":
        attach_unmerged(base.unet, pkl)
        unet, vae = base.unet.to(device, dtype), base.vae.to(device, dtype)
        ids = torch.tensor([[49406, 49407] + [0] * 75], device=device)
        text_encoder.to(device, dtype)

        @torch.no_grad()
        def run():
            ref = torch.nn.functional.interpolate(_lq(device).permute(0, 3, 1, 2).to(device), size=(512, 512),
                                                  mode="bicubic").clamp(0, 1)
            embeds = text_encoder(ids)[0]
            z = vae.encode((ref * 2 - 1).to(dtype)).latent_dist.mean * 0.18215
            eps = unet(z, torch.tensor([1], device=device), encoder_hidden_states=embeds).sample
            out = (vae.decode((z - eps) / 0.18215).sample.clamp(-1, 1) * 0.5 + 0.5).float()
            return adain_reference(out, ref.float())
        return run, 1
    if device.type != "cpu" or dtype != torch.float32:
        raise SystemExit("the release-structure baseline runs on CPU in fp32 only")
    model = ReleaseStyleSR(base.unet, base.vae, text_encoder, None, pkl, default=(variant == "release-default"),
                           lambda_pix=0.8, lambda_sem=1.2)
    return (lambda: model.upscale(lq, upscale=4, process_size=512)), 1


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def run_variant(variant: str, device: str, dtype: str, repeats: int) -> dict:
    from pisa_core.pipeline import resolve_dtype

    device = torch.device(device)
    dtype_t = resolve_dtype(dtype, device)
    with tempfile.TemporaryDirectory() as tmp:
        if variant.startswith("ours"):
            run, images = _ours(variant, device, dtype_t, repeats)
        else:
            run, images = _baseline(variant, device, dtype_t, repeats, Path(tmp))
        load_peak = current_peak_rss_gib()
        reset_peak_rss()
        with torch.inference_mode():
            seconds = median_time(run, repeats, device) / images
    result = {"variant": variant, "seconds": seconds, "peak_rss_gib": current_peak_rss_gib(),
              "load_peak_rss_gib": load_peak, "device_name": _device_name(device), "dtype": str(dtype_t)}
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/speed-<device>.json)")
    parser.add_argument("--variants", nargs="*", default=[v for v in VARIANTS if v not in OPTIONAL])
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in a child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.device, args.dtype, args.repeats)))
        return
    results = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--variant", variant, "--device", args.device, "--dtype", args.dtype,
               "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{variant}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{variant:28s} {r['seconds']:8.3f} s   peak RSS {r['peak_rss_gib']:5.2f} GiB", flush=True)
    report(results, args)


def report(results: list[dict], args) -> None:
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
    print("\n| variant | what | median s | peak RSS GiB (run) |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {VARIANTS[r['variant']]} | {r['seconds']:.3f} | {r['peak_rss_gib']:.2f} |")
    print("\n| ratio | value |\n|---|---|")
    for name, value in ratios.items():
        if value is not None:
            print(f"| {name} | {value:.2f} |")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "dtype": args.dtype, "repeats": args.repeats, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    target = Path(args.out) if args.out else out / f"speed-{args.device}.json"
    target.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
