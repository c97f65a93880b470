"""The inference path on tiny models: loaders agree, passes are planned as promised, ε is reusable,
odd sizes work, results are deterministic and stay in float32."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pisa_core.errors import PiSAError
from pisa_core.inference.guidance import PISA, PIX, dual_guidance, plan_passes
from pisa_core.inference.pipeline import PiSAPipeline


class UNetCalls:
    """Counts UNet forward calls and the batch sizes they ran with."""

    def __init__(self, pipe):
        self.batches: list[int] = []
        self._handle = pipe.unet.unet.register_forward_pre_hook(
            lambda module, args: self.batches.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


class DtypeRecorder(TorchDispatchMode):
    """Records the dtype of every tensor any torch op produces."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t):
                self.dtypes.add(t.dtype)
        return out


def test_diffusers_folder_and_single_file_give_identical_outputs(model_dir, lq_image):
    image = lq_image(16, 24)
    outs = []
    for base in ("sd21-tiny", "sd21-tiny.safetensors"):
        pipe = PiSAPipeline.from_files(model_dir / base, model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32")
        outs.append(pipe(image, process_size=0, lambda_pix=0.8, lambda_sem=1.2))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)


def test_weights_device_places_the_weights_apart_from_the_compute_device(model_dir):
    """A host with its own model management loads the weights onto its offload device."""
    pipe = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32",
                                   weights_device="meta")
    assert pipe.device == torch.device("cpu")
    assert {p.device.type for p in pipe.unet.parameters()} == {"meta"}
    assert {p.device.type for p in pipe.vae.parameters()} == {"meta"}
    assert pipe.prompt_embeds.device.type == "cpu"


def test_official_pkl_and_converted_safetensors_give_identical_outputs(model_dir, lq_image, pipe):
    image = lq_image(16, 16)
    twin = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.safetensors",
                                   device="cpu", dtype="fp32")
    for lp, ls in ((1.0, 1.0), (0.5, 1.5)):
        a = pipe(image, process_size=0, lambda_pix=lp, lambda_sem=ls)
        b = twin(image, process_size=0, lambda_pix=lp, lambda_sem=ls)
        assert torch.equal(a, b)


@pytest.mark.parametrize("lp, ls, batches", [
    (1.0, 1.0, [1]), (0.6, 0.6, [1]), (1.0, 0.0, [1]), (0.8, 1.2, [2]), (0.0, 0.0, []),
])
def test_pass_plan_counts_unet_calls(pipe, lq_image, lp, ls, batches):
    with UNetCalls(pipe) as calls:
        pipe(lq_image(16, 16), process_size=0, lambda_pix=lp, lambda_sem=ls)
    assert calls.batches == batches


def guided(pipe, latent, lambda_pix, lambda_sem, **tiles):
    """predict_eps for the branches the pair needs, then guide: what __call__ does in between."""
    eps = pipe.predict_eps(latent, need=plan_passes(lambda_pix, lambda_sem).branches, **tiles)
    return pipe.guide(latent, eps, lambda_pix, lambda_sem)


def test_merged_default_equals_the_two_pass_formula(pipe, lq_image):
    latent = pipe.encode(torch.rand(1, 3, 64, 64) * 2 - 1)
    merged = guided(pipe, latent, 1.0, 1.0)
    eps = pipe.predict_eps(latent, need=(PIX, PISA))
    formula = latent - dual_guidance(eps[PIX], eps[PISA], 1.0, 1.0) / pipe.scaling_factor
    torch.testing.assert_close(merged, formula, rtol=1e-5, atol=1e-4)


def test_batched_adjustable_equals_sequential_passes(pipe):
    latent = pipe.encode(torch.rand(2, 3, 64, 48) * 2 - 1)
    both = pipe.predict_eps(latent, need=(PIX, PISA))
    alone = {b: pipe.predict_eps(latent, need=(b,))[b] for b in (PIX, PISA)}
    for branch in (PIX, PISA):
        torch.testing.assert_close(both[branch], alone[branch], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(both[PIX], both[PISA], atol=1e-3)  # the semantic LoRA does something


def test_combination_from_cached_eps_needs_no_unet_and_equals_a_fresh_run(pipe):
    latent = pipe.encode(torch.rand(1, 3, 64, 64) * 2 - 1)
    eps = pipe.predict_eps(latent)
    for lp, ls in ((0.8, 1.2), (1.0, 0.0), (0.5, 0.5), (1.5, 0.2)):
        with UNetCalls(pipe) as calls:
            cached = pipe.guide(latent, eps, lp, ls)
        assert calls.batches == []
        torch.testing.assert_close(cached, guided(pipe, latent, lp, ls), rtol=0, atol=1e-4)


def test_guide_names_the_missing_eps(pipe):
    latent = pipe.encode(torch.rand(1, 3, 64, 64) * 2 - 1)
    eps = pipe.predict_eps(latent, need=(PISA,))
    pipe.guide(latent, eps, 0.7, 0.7)
    with pytest.raises(PiSAError, match="needs ε pix"):
        pipe.guide(latent, eps, 0.8, 1.2)


@pytest.mark.parametrize("h, w", [(13, 7), (1, 1), (5, 40), (17, 3)])
def test_odd_thin_and_tiny_inputs_give_exact_sizes(pipe, lq_image, h, w):
    out = pipe(lq_image(h, w), process_size=0, latent_tile=4, latent_overlap=2)
    assert out.shape == (1, 4 * h, 4 * w, 3)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_small_inputs_work_at_process_size_and_come_back_exact(pipe, lq_image):
    out = pipe(lq_image(6, 10), process_size=64, upscale=2)
    assert out.shape == (1, 12, 20, 3)


def test_latent_tiling_approaches_untiled_as_tiles_grow(pipe):
    """A random UNet attends globally, so tiles change its output; the change must shrink as the
    tiles grow and vanish once one tile covers the latent."""
    latent = pipe.encode(torch.nn.functional.interpolate(torch.rand(1, 3, 24, 32), size=(192, 256)) * 2 - 1)
    whole = guided(pipe, latent, 0.8, 1.2, latent_tile=64)
    errors = []
    for tile, overlap in ((8, 4), (16, 8), (24, 16)):
        tiled = guided(pipe, latent, 0.8, 1.2, latent_tile=tile, latent_overlap=overlap)
        errors.append(((tiled - whole).abs().mean() / whole.abs().mean()).item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.3
    assert torch.equal(guided(pipe, latent, 0.8, 1.2, latent_tile=32, latent_overlap=8), whole)


def test_tile_batching_equals_one_tile_per_call(pipe):
    latent = pipe.encode(torch.rand(1, 3, 96, 128) * 2 - 1)
    one = pipe.predict_eps(latent, latent_tile=8, latent_overlap=4, tile_batch=1)
    many = pipe.predict_eps(latent, latent_tile=8, latent_overlap=4, tile_batch=6)
    for branch in one:
        torch.testing.assert_close(one[branch], many[branch], rtol=1e-5, atol=1e-4)


def test_two_runs_are_identical(pipe, lq_image):
    image = lq_image(16, 16, seed=3)
    assert torch.equal(pipe(image, process_size=0), pipe(image, process_size=0))
    a = pipe(image, process_size=0, sample=True, seed=5)
    assert torch.equal(a, pipe(image, process_size=0, sample=True, seed=5))
    assert not torch.equal(a, pipe(image, process_size=0, sample=True, seed=6))


def test_no_float64_tensor_is_ever_made(pipe, lq_image):
    recorder = DtypeRecorder()
    with recorder:
        pipe(lq_image(16, 24), process_size=0, lambda_pix=0.8, lambda_sem=1.2, color_fix="wavelet",
             latent_tile=2, latent_overlap=1)
    assert torch.float64 not in recorder.dtypes


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_gray_and_alpha_channels_are_carried_through(pipe, lq_image, channels):
    image = lq_image(8, 12, channels=channels)
    out = pipe(image, process_size=0)
    assert out.shape == (1, 32, 48, channels)
    if channels in (2, 4):
        alpha = torch.nn.functional.interpolate(image[..., -1:].permute(0, 3, 1, 2), size=(32, 48), mode="bicubic",
                                                antialias=True).clamp(0, 1)
        torch.testing.assert_close(out[..., -1], alpha[:, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("options, message", [
    (dict(color_fix="median"), "color_fix"),
    (dict(geometry="crop"), "geometry"),
    (dict(latent_tile=16, latent_overlap=16), "overlap"),
    (dict(upscale=0), "upscale"),
])
def test_bad_options_get_clear_errors(pipe, lq_image, options, message):
    with pytest.raises(PiSAError, match=message):
        pipe(lq_image(8, 8), **options)


def test_bad_image_shape_gets_a_clear_error(pipe):
    with pytest.raises(PiSAError, match=r"\[B,H,W,C\]"):
        pipe(torch.rand(8, 8, 3))
