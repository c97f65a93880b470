"""Region-aware guidance: λ_pix and λ_sem as maps (from masks), with no extra UNet pass.

    ε(x) = λ_pix(x)·ε_pix(x) + λ_sem(x)·(ε_PiSA(x) − ε_pix(x)),   z_H = z_L − ε
"""

from __future__ import annotations

import pytest
import torch

from pisa_core.errors import PiSAError
from pisa_core.inference.geometry import map_to_latent
from pisa_core.inference.guidance import PISA, PIX, masked_lambda, plan_passes


def test_maps_follow_the_image_geometry(pipe):
    """A map drawn on the input lines up with the latent: enlarged like the image (working size,
    padding), averaged over each latent pixel."""
    _, plan = pipe.prepare(torch.rand(1, 10, 14, 3), upscale=4, process_size=0)  # 40×56 → padded 64×64
    left = torch.zeros(10, 14)
    left[:, :7] = 1.0
    on_latent = map_to_latent(left, plan, plan.latent_size, 1)
    assert on_latent.shape == (1, 1, 8, 8)
    assert torch.allclose(on_latent[..., :3], torch.ones(1, 1, 8, 3))  # image columns 0..23: inside
    assert torch.allclose(on_latent[..., 4:7], torch.zeros(1, 1, 8, 3))  # columns 32..55: outside
    assert torch.allclose(on_latent[..., 7], torch.zeros(1, 1, 8))  # the replicate padding of the outside
    bigger = torch.nn.functional.interpolate(left[None, None], size=(100, 140), mode="nearest")[0, 0]
    assert torch.allclose(map_to_latent(bigger, plan, plan.latent_size, 1), on_latent, atol=0.02)  # any size


def test_constant_maps_plan_like_numbers_and_varying_maps_need_both_passes():
    assert plan_passes(torch.full((5, 7), 0.6), torch.full((1, 1, 5, 7), 0.6)).branches == (PISA,)
    assert plan_passes(1.0, torch.zeros(3, 3)).branches == (PIX,)
    varying = torch.linspace(0, 1, 9).reshape(3, 3)
    assert plan_passes(1.0, varying).branches == (PIX, PISA)
    assert masked_lambda(1.3, 0.3, None) == 1.3
    assert torch.allclose(masked_lambda(1.3, 0.3, torch.tensor([[0.0, 0.5, 1.0]])), torch.tensor([[1.3, 0.8, 0.3]]))


@pytest.mark.parametrize("bad, message", [
    (torch.full((4, 4), float("nan")), "NaN"),
    (torch.ones(2, 3, 4, 4), r"\[B,1,h,w\]"),
    (torch.ones(4, 4, dtype=torch.int64), "float"),
])
def test_bad_maps_get_one_clear_line(pipe, lq_image, bad, message):
    with pytest.raises(PiSAError, match=message):
        pipe(lq_image(8, 8), process_size=0, lambda_sem=bad)


def test_a_map_changes_only_its_region_and_costs_no_extra_pass(pipe):
    latent = pipe.encode(torch.rand(1, 3, 64, 96) * 2 - 1)
    eps = pipe.predict_eps(latent, need=(PIX, PISA))
    inside, outside = pipe.guide(latent, eps, 1.0, 0.3), pipe.guide(latent, eps, 1.0, 1.3)
    mask = torch.zeros(1, 1, 8, 12)
    mask[..., :6] = 1.0
    mixed = pipe.guide(latent, eps, 1.0, masked_lambda(1.3, 0.3, mask))
    assert torch.equal(mixed[..., :6], inside[..., :6]) and torch.equal(mixed[..., 6:], outside[..., 6:])


def test_the_pipeline_takes_maps_over_the_input_image(pipe, lq_image):
    image = lq_image(12, 16)
    full = pipe(image, process_size=0, lambda_pix=0.7, lambda_sem=torch.full((3, 4), 0.4))
    assert torch.equal(full, pipe(image, process_size=0, lambda_pix=0.7, lambda_sem=0.4))
    half = torch.zeros(12, 16)
    half[:, :8] = 1.0
    mixed = pipe(image, process_size=0, lambda_sem=masked_lambda(1.3, 0.3, half))
    a, b = pipe(image, process_size=0, lambda_sem=0.3), pipe(image, process_size=0, lambda_sem=1.3)
    # away from the seam each side is closer to its own scalar run (the tiny VAE's attention mixes globally)
    assert (mixed[:, :, :16] - a[:, :, :16]).abs().mean() < (mixed[:, :, :16] - b[:, :, :16]).abs().mean()
    assert (mixed[:, :, -16:] - b[:, :, -16:]).abs().mean() < (mixed[:, :, -16:] - a[:, :, -16:]).abs().mean()


# ------------------------------------------------------------------ nodes


@pytest.fixture()
def regions(model_dir, tmp_path, monkeypatch):
    from test_nodes import NODES

    (tmp_path / "diffusers").mkdir()
    (tmp_path / "diffusers" / "sd").symlink_to(model_dir / "sd21-tiny", target_is_directory=True)
    (tmp_path / "pisa_sr").mkdir()
    (tmp_path / "pisa_sr" / "pisa_sr.pkl").symlink_to(model_dir / "pisa_sr.pkl")
    monkeypatch.setenv("PISA_SR_MODELS_DIR", str(tmp_path))
    model = NODES["PiSALoader"].execute("[diffusers] sd", "pisa_sr.pkl", "fp32")[0]
    image = torch.rand(2, 12, 16, 3)
    latent = NODES["PiSAEncode"].execute(model, image, 4.0, "bicubic", 0, 0)[0]

    def guide(lambda_pix=1.0, lambda_sem=1.3, **mask):
        return NODES["PiSADualGuidance"].execute(model, latent, lambda_pix, lambda_sem, 96, 32, **mask)[0]["samples"]

    return model, image, guide


def test_node_masks_ones_zeros_and_halves(regions):
    model, image, guide = regions
    outside = guide()
    calls = model.unet_calls
    inside = guide(lambda_pix=1.0, lambda_sem=0.3)
    ones, zeros = torch.ones(12, 16), torch.zeros(2, 12, 16)
    assert torch.equal(guide(mask=ones, lambda_pix_masked=1.0, lambda_sem_masked=0.3), inside)
    assert torch.equal(guide(mask=zeros, lambda_pix_masked=1.0, lambda_sem_masked=0.3), outside)
    half = torch.zeros(1, 48, 64)  # another size than the image: resized like it
    half[..., :32] = 1.0
    mixed = guide(mask=half, lambda_pix_masked=1.0, lambda_sem_masked=0.3)  # the map is resampled: rounding only
    torch.testing.assert_close(mixed[..., :3], inside[..., :3], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[..., 5:], outside[..., 5:], rtol=0, atol=1e-5)
    assert not torch.allclose(mixed[..., 3:5], inside[..., 3:5], atol=1e-3)  # the two sides really differ
    per_frame = torch.stack([torch.ones(12, 16), torch.zeros(12, 16)])  # a batch of masks for a batch of frames
    frames = guide(mask=per_frame, lambda_sem_masked=0.3)
    assert torch.equal(frames[0], inside[0]) and torch.equal(frames[1], outside[1])
    assert model.unet_calls == calls  # masks and masked λ only re-mix the cached ε


def test_upscale_node_takes_a_mask(regions):
    from test_nodes import NODES, PiSAError

    model, image, _ = regions
    run = NODES["PiSAUpscale"].execute
    plain = run(model, image[:1], 4.0, 1.0, 0.3, "adain", "bicubic", 96, 32, 0, 0)[0]
    masked = run(model, image[:1], 4.0, 1.0, 1.3, "adain", "bicubic", 96, 32, 0, 0, mask=torch.ones(1, 12, 16),
                 lambda_pix_masked=1.0, lambda_sem_masked=0.3)[0]
    assert torch.equal(plain, masked)
    with pytest.raises(PiSAError, match="MASK"):
        run(model, image[:1], 4.0, 1.0, 1.3, "adain", "bicubic", 96, 32, 0, 0, mask=torch.ones(3, 12, 16))
