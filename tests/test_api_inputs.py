"""The Python API checks its inputs: PiSAPipeline.__call__ and prepare take float images in
[0, 1] or uint8 in 0..255 (read as /255), refuse NaN/inf pixels, empty batches, non-finite λ and
upscale, negative process sizes and oversized outputs, each with a one-line PiSAError."""

from __future__ import annotations

import pytest
import torch

from pisa_core import options
from pisa_core.errors import PiSAError

FAST = {"process_size": 0}


def test_uint8_images_are_read_as_0_to_255(pipe, lq_image):
    image = lq_image(16, 16)
    as_uint8 = (image * 255).round().to(torch.uint8)
    out = pipe(as_uint8, **FAST)
    assert torch.equal(out, pipe(as_uint8.float() / 255, **FAST))
    assert out.mean() < 0.9 and out.std() > 0.01  # not the all-white image of a 0..255 float read


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_float_images_of_any_precision(pipe, lq_image, dtype):
    image = lq_image(16, 16)
    out = pipe(image.to(dtype), **FAST)
    assert out.dtype == torch.float32 and out.shape == (1, 64, 64, 3) and torch.isfinite(out).all()


def _bad_images():
    nan = torch.rand(1, 16, 16, 3)
    nan[0, 3, 4, 1] = float("nan")
    inf = torch.rand(1, 16, 16, 3)
    inf[0, 0, 0, 0] = float("inf")
    return [
        (nan, "NaN"), (inf, "infinite"),
        (torch.rand(1, 16, 16, 3) * 255, r"\[0, 1\]"),          # a 0..255 float tensor
        (torch.rand(1, 16, 16, 3) * 2 - 1, r"\[0, 1\]"),        # a [-1, 1] tensor
        (torch.rand(0, 16, 16, 3), "empty"), (torch.rand(1, 0, 16, 3), "empty"),
        (torch.randint(0, 255, (1, 16, 16, 3), dtype=torch.int32), "float"),
        (torch.ones(1, 16, 16, 3, dtype=torch.bool), "float"),
        (torch.rand(16, 16, 3), r"\[B,H,W,C\]"), (torch.rand(1, 16, 16, 5), r"\[B,H,W,C\]"),
        (torch.rand(1, 16, 16, 3).numpy(), "tensor"), ([], "Pillow"),
    ]


@pytest.mark.parametrize("images, message", _bad_images())
def test_bad_images_are_refused_by_call_and_prepare(pipe, images, message):
    with pytest.raises(PiSAError, match=message):
        pipe(images, **FAST)
    with pytest.raises(PiSAError, match=message):
        pipe.prepare(images, **FAST)


@pytest.mark.parametrize("kwargs, message", [
    ({"lambda_pix": float("nan")}, "lambda_pix"), ({"lambda_sem": float("inf")}, "lambda_sem"),
    ({"lambda_pix": -float("inf")}, "lambda_pix"), ({"lambda_sem": "1"}, "lambda_sem"),
    ({"upscale": float("inf")}, "upscale"), ({"upscale": float("nan")}, "upscale"), ({"upscale": 0}, "upscale"),
    ({"upscale": -2.0}, "upscale"), ({"upscale": 1000.0}, "MP"),
    ({"process_size": -5}, "process_size"),
    ({"color_fix": "bogus"}, "color_fix"), ({"geometry": "bogus"}, "geometry"), ({"resampling": "bogus"}, "resampling"),
    ({"latent_tile": 0}, "tile"), ({"latent_overlap": 96}, "overlap"), ({"vae_tile": 100}, "vae_tile"),
    ({"tile_batch": 0}, "tile_batch"), ({"geometry": "release", "upscale": 2.5}, "whole"),
])
def test_bad_arguments_are_a_pisa_error(pipe, lq_image, kwargs, message):
    with pytest.raises(PiSAError, match=message) as caught:
        pipe(lq_image(16, 16), **{**FAST, **kwargs})
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("kwargs", [{"upscale": float("inf")}, {"process_size": -5}, {"upscale": 1000.0}])
def test_prepare_checks_its_arguments(pipe, lq_image, kwargs):
    with pytest.raises(PiSAError):
        pipe.prepare(lq_image(16, 16), **kwargs)


@pytest.mark.parametrize("h, w", [(1, 500), (8, 3000)])
def test_thin_inputs_work_at_a_bounded_size(pipe, h, w):
    """The small-input rule enlarges thin images only up to MAX_WORK_AREA_FACTOR × process_size²."""
    size = options.default("process_size")
    _, plan = pipe.prepare(torch.rand(1, h, w, 3), process_size=size)
    assert plan.out_size == (4 * h, 4 * w)
    assert plan.work_size[0] * plan.work_size[1] <= options.MAX_WORK_AREA_FACTOR * size * size * 1.01
    assert min(plan.work_size) > 4 * h  # still enlarged towards the training size
