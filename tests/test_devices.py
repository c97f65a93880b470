"""Device placement proven on the CPU: the model on PyTorch's `meta` device, the inputs on the CPU
as the CLI and ComfyUI hand them over. Every stage, both tiling paths of each, the colour fix, the
whole pipeline and the node helpers must run; tiled results land on the model's device; the source
moves there once, not once per tile. (The training step has its own meta test in test_train.py.)"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pisa_core import options
from pisa_core.inference.guidance import PISA, PIX
from pisa_core.inference.pipeline import PiSAPipeline
from pisa_core.model.base import load_base_model
from pisa_core.model.checkpoint import load_pisa_weights
from pisa_core.model.resnet_inplace import InplaceResnetBlock2D

META = torch.device("meta")


class HostToDevice(TorchDispatchMode):
    """Records the shape of every tensor copied from the CPU to another device."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        source = args[0] if args and torch.is_tensor(args[0]) else None
        if source is not None and torch.is_tensor(out) and source.device.type == "cpu" and out.device.type != "cpu":
            self.shapes.append(tuple(source.shape))
        return out


@pytest.fixture(scope="module")
def meta_pipe(model_dir):
    base = load_base_model(model_dir / "sd21-tiny")
    return PiSAPipeline(base, load_pisa_weights(model_dir / "pisa_sr.pkl"), device="meta", dtype="fp32")


def test_weights_and_embedding_live_on_the_model_device(meta_pipe):
    assert {p.device for p in meta_pipe.unet.parameters()} == {META}
    assert {t.device for t in meta_pipe.unet.buffers()} == {META}  # the semantic side branches too
    assert {p.device for p in meta_pipe.vae.parameters()} == {META}
    assert meta_pipe.prompt_embeds.device == META
    # the stages below run the in-place resnet forward (resnet_inplace) on the device too
    assert any(type(m) is InplaceResnetBlock2D for m in meta_pipe.unet.modules())
    assert any(type(m) is InplaceResnetBlock2D for m in meta_pipe.vae.modules())


@pytest.mark.parametrize("vae_tile", [0, 128])  # untiled (auto on an unknown device) and tiled
def test_encode_from_cpu_pixels_lands_on_the_device(meta_pipe, vae_tile):
    """Untiled, the image moves to the device once; in exact tiles (vae_tiling) the image stays on
    the host and only tiles (with 1-pixel halos) move, never the whole image."""
    pixels = torch.zeros(1, 3, 256, 192)
    with HostToDevice() as copies:
        latent = meta_pipe.encode(pixels, vae_tile=vae_tile)
    assert latent.device == META and latent.shape == (1, 4, 32, 24) and latent.dtype == torch.float32
    images = [shape for shape in copies.shapes if len(shape) == 4]
    if vae_tile == 0:
        assert images.count(tuple(pixels.shape)) == 1
        assert all(shape == tuple(pixels.shape) or shape[-1] < 8 for shape in images), images  # and small tables
    else:
        assert tuple(pixels.shape) not in images
        assert max(shape[-1] * shape[-2] for shape in images) <= (vae_tile + 2) ** 2


@pytest.mark.parametrize("latent_tile", [96, 8])
def test_predict_eps_and_guide_from_a_cpu_latent(meta_pipe, latent_tile):
    latent = torch.zeros(1, 4, 24, 20)
    with HostToDevice() as copies:
        eps = meta_pipe.predict_eps(latent, need=(PIX, PISA), latent_tile=latent_tile, latent_overlap=4)
    assert {e.device for e in eps.values()} == {META}
    assert copies.shapes.count(tuple(latent.shape)) == 1
    cpu_eps = {k: torch.zeros(v.shape) for k, v in eps.items()}  # as a host's ε cache hands them back
    z_high = meta_pipe.guide(latent, cpu_eps, 0.8, 1.2)
    assert z_high.device == META and z_high.shape == latent.shape


@pytest.mark.parametrize("vae_tile", [0, 128])
def test_decode_and_finish_from_a_cpu_latent(meta_pipe, vae_tile):
    latent = torch.zeros(1, 4, 24, 32)
    decoded = meta_pipe.decode(latent, vae_tile=vae_tile)
    assert decoded.device == META and decoded.shape == (1, 3, 192, 256)
    _pixels, plan = meta_pipe.prepare(torch.rand(1, 48, 64, 3), upscale=4, process_size=0)
    for fix in options.COLOR_FIXES:
        out = meta_pipe.finish(decoded, plan, color_fix=fix)
        assert out.device.type == "cpu" and out.shape == (1, 192, 256, 3)


@pytest.mark.parametrize("lambdas", [(1.0, 1.0), (0.8, 1.2)])
def test_the_whole_pipeline_runs_with_the_model_on_the_device(meta_pipe, lambdas):
    out = meta_pipe(torch.rand(1, 40, 36, 3), lambda_pix=lambdas[0], lambda_sem=lambdas[1], process_size=0,
                    latent_tile=8, latent_overlap=4, vae_tile=128)
    assert out.device.type == "cpu" and out.shape == (1, 160, 144, 3)


def test_node_helpers_run_with_the_model_on_the_device(model_dir, tmp_path, monkeypatch):
    from test_nodes import NODES, host

    (tmp_path / "diffusers").mkdir()
    (tmp_path / "pisa_sr").mkdir()
    (tmp_path / "diffusers" / "sd21").symlink_to(model_dir / "sd21-tiny", target_is_directory=True)
    (tmp_path / "pisa_sr" / "pisa_sr.pkl").symlink_to(model_dir / "pisa_sr.pkl")
    monkeypatch.setenv("PISA_SR_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("PISA_SR_DEVICE", "meta")
    host.HOST.request_interrupt(False)
    model = NODES["PiSALoader"].execute("[diffusers] sd21", "pisa_sr.pkl", "fp32")[0]
    assert model.pipe.device == META and next(model.pipe.unet.parameters()).device == META
    image = torch.rand(1, 20, 24, 3)
    latent = NODES["PiSAEncode"].execute(model, image, 4.0, "bicubic", 128, 0)[0]
    assert latent["samples"].device.type == "cpu"
    guided = NODES["PiSADualGuidance"].execute(model, latent, 0.8, 1.2, 8, 4)[0]
    out = NODES["PiSADecode"].execute(model, guided, "adain", 128, image)[0]
    assert out.shape == (1, 80, 96, 3)
    assert NODES["PiSAUpscale"].execute(model, image, 4.0, 1.0, 1.0, "wavelet", "bicubic", 8, 4, 128, 0)[0].shape \
        == (1, 80, 96, 3)
