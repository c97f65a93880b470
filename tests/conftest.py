"""Session fixtures: tiny SD2-structured models and PiSA-SR weights written to disk in the real
formats, loaded back only through the public loading code."""

from __future__ import annotations

import pytest
import torch
from model_files import write_diffusers_folder, write_single_file
from pisa_files import write_official_pkl
from tiny_models import tiny_text_encoder, tiny_unet, tiny_vae

# Tiny models gain nothing from intra-op threads, and CI shares two cores with the test runner.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def prompt_cache_folder(tmp_path_factory):
    """The empty-prompt cache goes to a folder of this session, never into the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("prompt_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PISA_SR_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """diffusers folder, single-file .safetensors, official pisa_sr.pkl and its .safetensors twin."""
    from pisa_core.model.checkpoint import convert_pisa_weights

    root = tmp_path_factory.mktemp("models")
    unet, vae, text_encoder = tiny_unet(), tiny_vae(), tiny_text_encoder()
    write_diffusers_folder(root / "sd21-tiny", unet, vae, text_encoder)
    write_single_file(root / "sd21-tiny.safetensors", unet, vae, text_encoder)
    write_official_pkl(unet, root / "pisa_sr.pkl", rank=4, seed=0)
    convert_pisa_weights(root / "pisa_sr.pkl", root / "pisa_sr.safetensors")
    return root


@pytest.fixture(scope="session")
def pipe(model_dir):
    from pisa_core.inference.pipeline import PiSAPipeline

    return PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32")


@pytest.fixture()
def lq_image():
    """A smooth random RGB image [1,H,W,3] in [0,1] (structure, not noise, like a photo)."""
    def make(h=16, w=16, seed=0, channels=3):
        g = torch.Generator().manual_seed(seed)
        coarse = torch.rand(1, channels, max(2, h // 4), max(2, w // 4), generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        return img.permute(0, 2, 3, 1).contiguous()
    return make
