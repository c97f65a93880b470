"""The exact tiled VAE (vae_tiling) on a tiny VAE with non-trivial statistics: tiles give the
untiled picture (a check that per-tile GroupNorm statistics fail), progress and cancel per tile,
the out-of-memory back-off, and device placement with the model on the `meta` device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import tiny_vae
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from pisa_core.errors import PiSAError
from pisa_core.inference import vae_attention, vae_tiling
from pisa_core.inference.memory import CPU_VAE_TILE, MIN_VAE_TILE, auto_vae_tile, with_backoff
from pisa_core.inference.vae_tiling import group_moments, merge_moments, run_tiled
from pisa_core.model.resnet_inplace import use_inplace_resnets

META = torch.device("meta")


class Cancelled(Exception):
    pass


@pytest.fixture(scope="module")
def vae():
    model = tiny_vae()
    use_inplace_resnets(model)  # as the pipeline runs it
    return model


def regions_image(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Pixels in [-1, 1] whose regions differ in mean and contrast (flat and dark, bright and
    noisy, a gradient), so per-tile GroupNorm statistics differ strongly from the whole image's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, h, w, generator=g) * 2 - 1
    x[:, :, : h // 2, : w // 3] = -0.8 + 0.05 * x[:, :, : h // 2, : w // 3]
    x[:, :, h // 2:, w // 3:] = 0.3 + 0.7 * x[:, :, h // 2:, w // 3:]
    x[:, 0, :, -w // 4:] = torch.linspace(-1, 1, h)[:, None]
    return x


def untiled_encode(vae, pixels):
    return vae.quant_conv(vae.encoder(pixels.to(next(vae.parameters()).dtype))).float()


def untiled_decode(vae, latent):
    return vae.decoder(vae.post_quant_conv(latent.to(next(vae.parameters()).dtype))).float()


def per_tile_decode(vae, latent, tile):
    """Each latent tile decoded on its own and pasted (per-tile GroupNorm statistics and attention)."""
    out = torch.zeros(latent.shape[0], 3, latent.shape[2] * 8, latent.shape[3] * 8)
    for y in range(0, latent.shape[2], tile):
        for x in range(0, latent.shape[3], tile):
            part = untiled_decode(vae, latent[..., y:y + tile, x:x + tile])
            out[..., y * 8:y * 8 + part.shape[2], x * 8:x * 8 + part.shape[3]] = part
    return out


def close_to(got, ref, rel):
    """Max abs difference within `rel` of the reference's spread."""
    return (got - ref).abs().max().item() <= rel * ref.std().item()


EXACT = 1e-4  # float32 rounding through the whole VAE, relative to the output's spread


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def test_pairwise_moments_equal_the_whole_sets_moments():
    g = torch.Generator().manual_seed(1)
    data = (1e4 + torch.randn(2, 6, 300, generator=g, dtype=torch.float64))  # a large offset: cancellation
    n, mean, m2 = 0, torch.zeros(2, 6, dtype=torch.float64), torch.zeros(2, 6, dtype=torch.float64)
    for part in data.split((7, 100, 193), dim=2):
        var_p, mean_p = torch.var_mean(part, dim=2, correction=0)
        n, mean, m2 = merge_moments(n, mean, m2, part.shape[2], mean_p, var_p * part.shape[2]) if n else (
            part.shape[2], mean_p, var_p * part.shape[2])
    var, whole_mean = torch.var_mean(data, dim=2, correction=0)
    torch.testing.assert_close(mean, whole_mean)
    torch.testing.assert_close(m2 / n, var)
    mean_g, var_g = group_moments(n, mean, m2, groups=3)
    grouped = data.reshape(2, 3, 2 * 300)
    var_ref, mean_ref = torch.var_mean(grouped, dim=2, correction=0)
    torch.testing.assert_close(mean_g, mean_ref)
    torch.testing.assert_close(var_g, var_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tile_moments_are_each_samples_channel_moments(dtype):
    g = torch.Generator().manual_seed(2)
    tile = (torch.randn(2, 8, 37, 29, generator=g) * torch.linspace(0.1, 5, 8)[:, None, None]
            + torch.linspace(-20, 20, 8)[:, None, None]).to(dtype)
    tile[1] = tile[1] * 3 - 7  # the second sample's statistics differ from the first's
    for layout in (torch.contiguous_format, torch.channels_last):
        mean, m2 = vae_tiling.tile_moments(tile.contiguous(memory_format=layout))
        var_ref, mean_ref = torch.var_mean(tile.double(), dim=(2, 3), correction=0)
        assert mean.dtype == m2.dtype == torch.float64 and mean.shape == (2, 8)
        torch.testing.assert_close(mean, mean_ref, rtol=0, atol=1e-4)
        torch.testing.assert_close(m2 / (37 * 29), var_ref, rtol=1e-3, atol=0)
    mean, m2 = vae_tiling.tile_moments(tile[..., :1, :1])  # one pixel: no spread
    torch.testing.assert_close(mean, tile[..., 0, 0].double())
    assert not m2.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale_shift_is_a_float_affine_per_sample_and_channel(dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 6, 9, 11, generator=g) * 4).to(dtype).contiguous(memory_format=torch.channels_last)
    scale, shift = torch.rand(2, 6, 1, 1, generator=g) + 0.5, torch.randn(2, 6, 1, 1, generator=g)
    got = vae_tiling.scale_shift(x, scale, shift).to(dtype)
    want = (x.double() * scale.double() + shift.double()).to(dtype)  # computed exactly, rounded once
    ulp = torch.finfo(dtype).eps * want.double().abs()
    assert ((got.double() - want.double()).abs() <= ulp).all()


# ---------------------------------------------------------------------------------------------
# Tiled == untiled
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("tile", [16, 40, 64, 96])  # tiles smaller than the image in both axes, uneven
def test_tiled_encode_equals_untiled(vae, tile):
    pixels = regions_image(2, 96, 136)  # latent 12 x 17: an odd latent side, batch of two
    ref = untiled_encode(vae, pixels)
    got = run_tiled(vae, "encoder", pixels, tile=tile, full=(96, 136), device="cpu")
    assert got.shape == ref.shape == (2, 8, 12, 17) and got.dtype == torch.float32
    assert close_to(got, ref, EXACT)


@torch.no_grad()
@pytest.mark.parametrize("tile", [16, 24, 40, 64])
def test_tiled_decode_equals_untiled_and_per_tile_statistics_do_not(vae, tile):
    latent = torch.randn(2, 4, 13, 9, generator=torch.Generator().manual_seed(2))
    latent[:, :, :6] = latent[:, :, :6] * 0.2 + 1.5  # regions with different statistics
    ref = untiled_decode(vae, latent)
    got = run_tiled(vae, "decoder", latent, tile=tile, full=(104, 72), device="cpu")
    assert got.shape == ref.shape == (2, 3, 104, 72)
    assert close_to(got, ref, EXACT)
    # the same check fails for tiles normalised with their own statistics (the defect this fixes)
    assert not close_to(per_tile_decode(vae, latent, tile // 8), ref, 100 * EXACT)


@torch.no_grad()
def test_tiled_bf16_is_as_close_to_float32_as_untiled_bf16():
    vae = tiny_vae()
    use_inplace_resnets(vae)
    latent = torch.randn(1, 4, 12, 10, generator=torch.Generator().manual_seed(3))
    exact = untiled_decode(vae, latent)
    half = vae.to(torch.bfloat16)
    untiled_error = (untiled_decode(half, latent) - exact).abs().mean()
    tiled = run_tiled(half, "decoder", latent, tile=32, full=(96, 80), device="cpu")
    assert tiled.dtype == torch.float32
    assert (tiled - exact).abs().mean() <= 2 * untiled_error


# ---------------------------------------------------------------------------------------------
# Progress and cancel
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_progress_after_every_tile_and_a_cancel_stops_the_stage(vae):
    pixels = regions_image(1, 64, 96)
    ticks = []
    run_tiled(vae, "encoder", pixels, tile=32, full=(64, 96), device="cpu", progress=lambda d, t: ticks.append((d, t)))
    total = ticks[-1][1]
    assert [d for d, _ in ticks] == list(range(1, total + 1)) and {t for _, t in ticks} == {total}
    assert total > 6 * 12  # several passes of 6 tiles at full resolution

    calls = []

    class CountConvs(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.conv2d and not args[0].is_meta:  # the dry run that counts the tiles is on meta
                calls.append(1)
            return func(*args, **(kwargs or {}))

    def cancel_at_five(done, _total):
        if done == 5:
            raise Cancelled

    with CountConvs(), pytest.raises(Cancelled):
        run_tiled(vae, "encoder", pixels, tile=32, full=(64, 96), device="cpu", progress=cancel_at_five)
    assert len(calls) <= 5  # one tile's work per tick: nothing ran after the cancel


@torch.no_grad()
def test_pipeline_stages_report_tiles_and_cancel_inside_the_stage(pipe):
    pixels = regions_image(1, 192, 256)
    ticks = []
    latent = pipe.encode(pixels, vae_tile=128, progress=lambda d, t: ticks.append(d))
    assert len(ticks) > 20
    with pytest.raises(Cancelled):
        pipe.decode(latent, vae_tile=128, progress=lambda d, t: (_ for _ in ()).throw(Cancelled) if d == 3 else None)
    assert pipe.decode(latent, vae_tile=128).shape == (1, 3, 192, 256)  # the pipeline works after a cancel


@torch.no_grad()
def test_an_untiled_stage_reports_and_cancels_between_blocks(pipe):
    pixels = regions_image(1, 64, 64)
    ticks = []
    pipe.encode(pixels, vae_tile=0, progress=lambda d, t: ticks.append((d, t)))
    attention_chunks = sum(vae_attention.plan(a, 1, 8 * 8, "cpu", pipe.vae_dtype, pipe.free_memory()).chunks
                           for a in vae_attention.mid_attentions(pipe.vae, "encoder"))
    assert len(ticks) == len(vae_tiling.vae_blocks(pipe.vae, "encoder")) + attention_chunks == ticks[-1][1]
    ran = []
    handle = pipe.vae.encoder.mid_block.register_forward_pre_hook(lambda *a: ran.append(1))
    try:
        with pytest.raises(Cancelled):
            pipe.encode(pixels, vae_tile=0, progress=lambda d, t: (_ for _ in ()).throw(Cancelled))
    finally:
        handle.remove()
    assert ran == []  # cancelled after the first down block, before the mid-block
    assert all(not m._forward_hooks for m in vae_tiling.vae_blocks(pipe.vae, "encoder"))


class CountAttention(TorchFunctionMode):
    """Counts the attention computations that run on data (not on the meta device)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention and not args[0].is_meta:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
@pytest.mark.parametrize("vae_tile", [0, 128])
def test_a_cancel_inside_the_attention_stops_it(pipe, vae_tile, monkeypatch):
    """Untiled (between its blocks) and tiled alike, the whole-latent attention reports each chunk
    of queries, and a cancel there stops it: no later chunk runs; the module is as before."""
    monkeypatch.setattr(vae_attention, "CHUNK_SCORES", 32 * 32 * 128)  # 128 queries a chunk on a 32x32 latent
    pixels = regions_image(1, 256, 256)
    assert pipe.vae_tile_for("encode", (256, 256), vae_tile) == (256 if vae_tile == 0 else 128)
    attn = pipe.vae.encoder.mid_block.attentions[0]
    processor = attn.processor
    ticks = []
    with CountAttention() as counted:
        whole = pipe.encode(pixels, vae_tile=vae_tile, progress=lambda d, t: ticks.append((d, t)))
    assert counted.calls == 8
    assert [d for d, _ in ticks] == list(range(1, len(ticks) + 1)) and {t for _, t in ticks} == {len(ticks)}

    def cancel_after_three_chunks(_done, _total):
        if counted.calls == 3:
            raise Cancelled

    with CountAttention() as counted, pytest.raises(Cancelled):
        pipe.encode(pixels, vae_tile=vae_tile, progress=cancel_after_three_chunks)
    assert counted.calls == 3
    assert attn.processor is processor
    torch.testing.assert_close(pipe.encode(pixels, vae_tile=vae_tile), whole)  # the pipeline works after a cancel


# ---------------------------------------------------------------------------------------------
# Pipeline: tiled == untiled, out-of-memory back-off
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_pipeline_tiled_stages_equal_untiled(pipe):
    pixels = regions_image(1, 192, 256)
    whole = pipe.encode(pixels, vae_tile=256)
    tiled = pipe.encode(pixels, vae_tile=128)
    assert close_to(tiled, whole, EXACT)
    decoded_whole = pipe.decode(whole, vae_tile=256)
    assert close_to(pipe.decode(whole, vae_tile=128), decoded_whole, EXACT)


class OOMAbove(TorchFunctionMode):
    """An allocation failure for any convolution input wider than `limit` pixels (as a device
    would raise for a tile too large)."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.widths = limit, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d and args[0].shape[-1] > self.limit:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def test_out_of_memory_halves_the_tile_and_the_result_is_unchanged(pipe):
    latent = pipe.encode(regions_image(1, 192, 256), vae_tile=256)
    expected = pipe.decode(latent, vae_tile=256)
    tried = []

    def decode(tile):
        tried.append(tile)
        return pipe.decode(latent, vae_tile=tile)

    with OOMAbove(140):  # a 128-pixel tile with its halos fits, a 256-pixel one does not
        out = with_backoff(decode, 512, minimum=MIN_VAE_TILE, what="VAE decoder", release=lambda: None)
    assert tried == [512, 256, 128]
    assert close_to(out, expected, EXACT)
    with OOMAbove(8), pytest.raises(PiSAError, match="Out of memory in the VAE decoder even with a tile of 128"):
        with_backoff(decode, 256, minimum=MIN_VAE_TILE, what="VAE decoder", release=lambda: None)


def test_auto_tile_on_a_cpu_is_for_speed_and_on_a_gpu_the_largest_that_fits():
    big, small = (4096, 4096), (512, 512)
    assert auto_vae_tile("decode", small, torch.bfloat16, None, "cpu") is None
    cpu_big = auto_vae_tile("decode", big, torch.bfloat16, None, "cpu")
    assert cpu_big is not None and cpu_big < 4096
    assert auto_vae_tile("decode", big, torch.bfloat16, None, "cuda") is None  # unknown free memory: untiled
    assert auto_vae_tile("decode", big, torch.bfloat16, 2**30, "cpu") <= cpu_big  # memory still bounds it
    # a CPU runs untiled (the fastest) wherever the stage fits in the available RAM, tiles where not
    ram = 24 * 2**30
    assert auto_vae_tile("decode", (2048, 2048), torch.bfloat16, ram, "cpu") is None
    assert auto_vae_tile("encode", big, torch.bfloat16, ram, "cpu") == CPU_VAE_TILE
    assert auto_vae_tile("decode", (2048, 2048), torch.bfloat16, 4 * 2**30, "cpu") == CPU_VAE_TILE


# ---------------------------------------------------------------------------------------------
# Device placement: the model on `meta`, the host on the CPU
# ---------------------------------------------------------------------------------------------

class Placement(TorchDispatchMode):
    """Every activation made by the computing run (convolution outputs, copies between devices,
    new buffers; not the attention's internal token tensors): (device, channels, height, width). That run
    begins with the first host (CPU) buffer; the shape-only dry run before it, which counts the
    tiles, makes meta tensors only."""

    def __init__(self):
        super().__init__()
        self.made: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        made = func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten._to_copy,
                                       torch.ops.aten.empty, torch.ops.aten.empty_strided)
        if made and torch.is_tensor(out) and out.dim() == 4 and (self.made or out.device.type == "cpu"):
            self.made.append((out.device.type, *out.shape[1:]))
        return out


@torch.no_grad()
@pytest.mark.parametrize("part,shape,full", [("encoder", (1, 3, 128, 192), (128, 192)),
                                             ("decoder", (1, 4, 16, 24), (128, 192))])
def test_meta_device_holds_tiles_and_the_host_holds_the_image(part, shape, full):
    vae = tiny_vae().to(META)
    tile, source = 32, torch.zeros(shape)
    with Placement() as seen:
        out = run_tiled(vae, part, source, tile=tile, full=full, device=META)
    assert out.device == META
    on_device = [m for m in seen.made if m[0] == "meta"]
    on_host = [m for m in seen.made if m[0] == "cpu"]
    latent = (full[0] // 8, full[1] // 8)
    # the device never holds a full-size activation: only tiles (+ halos of the 3x3 convs and the
    # upsampler's recomputation), and at latent resolution the whole latent (the attention); the
    # stage's result (the 3-channel image, the 8-channel moments) is returned there whole
    largest = max(h * w for _, c, h, w in on_device if (h, w) != latent and c > 8)
    assert largest <= (tile + 4) ** 2
    assert not any((h, w) == full and c > 3 for _, c, h, w in on_device)
    # the host holds the full-resolution activations (more than three channels: not just in/out)
    assert any((h, w) == full and c > 3 for _, c, h, w in on_host)


def test_unsupported_vae_is_a_clear_error():
    vae = tiny_vae()
    vae.decoder.up_blocks[0].upsamplers[0].use_conv_transpose = True
    with pytest.raises(PiSAError, match="does not support this VAE's decoder.up_blocks.0.upsamplers.0"):
        run_tiled(vae, "decoder", torch.zeros(1, 4, 8, 8), tile=32, full=(64, 64), device="cpu")


# ---------------------------------------------------------------------------------------------
# The CLI: a Ctrl-C inside a tiled stage leaves no output file
# ---------------------------------------------------------------------------------------------

class CtrlCAtConv(TorchFunctionMode):
    """Ctrl-C (KeyboardInterrupt) arriving at the n-th convolution of the VAE's tiles."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d and args[0].shape[1] <= 64:  # the tiny VAE's convs, not the UNet's
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt
        return func(*args, **(kwargs or {}))


def test_cli_ctrl_c_in_a_tiled_vae_stage_leaves_no_output(model_dir, tmp_path):
    from pisa_core.cli.main import main

    source, out = tmp_path / "in.png", tmp_path / "out"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(source)
    args = ["upscale", str(source), "-o", str(out), "--base", str(model_dir / "sd21-tiny.safetensors"),
            "--weights", str(model_dir / "pisa_sr.pkl"), "--process-size", "0", "--device", "cpu",
            "--vae-tile", "128"]
    with CtrlCAtConv(40):
        assert main(args) == 130
    assert not out.exists() or not any(out.iterdir())
