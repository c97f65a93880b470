"""Precision rules: what `auto` picks on machines with and without native bf16 (the capability
probe answered by the test), and what happens when half precision overflows (NaN/inf in the
encode, the ε or the decode): the part is switched to fp32 (logged, visible, the host told), the
stage runs again, and an output that stays non-finite is an error, not an image."""

from __future__ import annotations

import logging

import pytest
import torch

from pisa_core import options
from pisa_core.errors import PiSAError
from pisa_core.inference import hardware
from pisa_core.inference.hardware import Probe
from pisa_core.inference.pipeline import PiSAPipeline


def probe(cpu_bf16=False, capability=(8, 0), asked=None, xpu_bf16=True):
    def cuda_capability(device):
        if asked is not None:
            asked.append(device)
        return capability
    return Probe(cpu_native_bf16=lambda: cpu_bf16, cuda_capability=cuda_capability, xpu_bf16=lambda device: xpu_bf16)


@pytest.mark.parametrize("device, machine, expected", [
    ("cpu", probe(cpu_bf16=True), torch.bfloat16),     # AVX512-BF16 / AMX / Arm BF16
    ("cpu", probe(cpu_bf16=False), torch.float32),     # emulated bf16 is slower than fp32; fp16 too
    ("cuda:0", probe(capability=(8, 0)), torch.bfloat16),   # Ampere and later
    ("cuda:0", probe(capability=(9, 0)), torch.bfloat16),
    ("cuda:0", probe(capability=(7, 5)), torch.float16),    # T4, RTX 20xx: no bf16 convolutions in cuDNN
    ("cuda:0", probe(capability=(7, 0)), torch.float16),    # V100
    ("mps", probe(cpu_bf16=True), torch.float16),
    ("xpu:0", probe(xpu_bf16=True), torch.bfloat16),     # Intel Arc / Data Center GPUs
    ("xpu:0", probe(xpu_bf16=False), torch.float16),
])
def test_auto_dtype_follows_what_the_device_computes_natively(device, machine, expected):
    assert hardware.auto_dtype(torch.device(device), machine) == expected
    assert hardware.resolve_dtype("auto", torch.device(device), machine) == expected
    assert hardware.resolve_dtype(None, torch.device(device), machine) == expected


def test_auto_dtype_asks_about_the_selected_gpu_not_the_current_one():
    asked = []
    hardware.auto_dtype(torch.device("cuda:1"), probe(capability=(7, 5), asked=asked))
    assert asked == [torch.device("cuda:1")]


def test_explicit_dtypes_are_kept_and_bad_ones_refused():
    cpu = torch.device("cpu")
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        assert hardware.resolve_dtype(name, cpu, probe(cpu_bf16=True)) == dtype
        assert hardware.resolve_dtype(dtype, cpu) == dtype
    for bad in ("fp64", "half", torch.float64):
        with pytest.raises(PiSAError, match="dtype"):
            hardware.resolve_dtype(bad, cpu)


def test_channels_last_goes_with_bf16_on_the_cpu_and_with_gpus():
    assert options.auto_channels_last(torch.device("cpu"), torch.bfloat16)
    assert not options.auto_channels_last(torch.device("cpu"), torch.float32)
    assert options.auto_channels_last(torch.device("cuda"), torch.float16)


def test_this_machine_resolves_auto_by_its_own_probe(model_dir):
    pipe = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu")
    assert pipe.dtype == hardware.auto_dtype(torch.device("cpu"))
    assert pipe.channels_last == options.auto_channels_last(torch.device("cpu"), pipe.dtype)


# ------------------------------------------------------------------ overflow in half precision



def overflowing(model_dir, part: str, told: list, **options_):
    """A half-precision pipeline whose `part` overflows fp16: its first conv gets a bias just below
    fp16's largest value (65504) and larger weights, so its outputs pass it; every weight stays
    finite in fp16, and the next GroupNorm brings fp32 activations back to normal."""
    pipe = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp16",
                                   on_upcast=told.append, **options_)
    layer = {"encode": pipe.vae.encoder.conv_in, "unet": pipe.unet.unet.conv_in, "decode": pipe.vae.decoder.conv_in}
    with torch.no_grad():
        layer[part].bias.fill_(6.5e4)
        layer[part].weight.mul_(1e3)
    return pipe


@pytest.mark.parametrize("part, stage", [("encode", "vae"), ("unet", "unet"), ("decode", "vae")])
def test_an_overflow_switches_that_part_to_fp32_and_reruns_the_stage(model_dir, lq_image, caplog, part, stage):
    told: list[str] = []
    pipe = overflowing(model_dir, part, told)
    image = lq_image(16, 16)
    with caplog.at_level(logging.WARNING, logger="pisa_core.inference.pipeline"):
        try:
            out = pipe(image, process_size=0, lambda_pix=0.8, lambda_sem=1.2)
        except RuntimeError as error:
            skip_without_half_kernels(error)
    assert torch.isfinite(out).all() and out.std() > 0.01  # not NaN, not a flat (black) image
    assert pipe.upcasts == [stage] and told == [stage]
    assert (pipe.vae_dtype if stage == "vae" else pipe.unet_dtype) == torch.float32
    assert f"the {stage.upper()} overflowed in fp16" in caplog.text


def test_memory_estimates_follow_the_upcast(model_dir, lq_image):
    told: list[str] = []
    # free memory tight enough that the tile is memory's choice, not the CPU's speed rule
    pipe = overflowing(model_dir, "decode", told, free_memory=lambda: 2**30)
    before = pipe.vae_tile_for("decode", (4096, 4096), 0)
    try:
        pipe(lq_image(16, 16), process_size=0, vae_tile=128)
    except RuntimeError as error:
        skip_without_half_kernels(error)
    assert pipe.vae_dtype == torch.float32
    assert pipe.vae_tile_for("decode", (4096, 4096), 0) < before  # twice the bytes per pixel now


def test_still_non_finite_in_fp32_is_an_error_not_an_image(model_dir, lq_image):
    pipe = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32")
    with torch.no_grad():
        pipe.vae.decoder.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(PiSAError, match="VAE decode produced NaN or infinite values even in float32 from a latent "
                       "as large as .*lambda_pix and lambda_sem far from the paper's 0 to 1.5"):
        pipe(lq_image(16, 16), process_size=0)


def test_non_finite_results_name_the_stage_and_the_settings(pipe):
    with pytest.raises(PiSAError, match=r"VAE decode .* from a latent as large as 1e\+30"):
        pipe.decode(torch.full((1, 4, 4, 4), 1e30))
    latent = torch.zeros(1, 4, 4, 4)
    eps = {"pix": torch.zeros(1, 4, 4, 4), "pisa": torch.full((1, 4, 4, 4), float("inf"))}
    with pytest.raises(PiSAError, match=r"Guidance with lambda_pix 1 and lambda_sem 0.5 gave NaN or infinite latents "
                                        r"\(the UNet ran in fp32\)"):
        pipe.guide(latent, eps, 1.0, 0.5)


def skip_without_half_kernels(error: RuntimeError) -> None:
    """Some CPU builds lack fp16 kernels ("... not implemented for 'Half'"): skip only for that."""
    if "not implemented for 'Half'" in str(error) or "not implemented for 'BFloat16'" in str(error):
        pytest.skip(f"this CPU build lacks half-precision kernels: {error}")
    raise error
