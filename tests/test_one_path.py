"""One upscale path: the same photo through the CLI, the Python API, PiSAUpscale and the four-node
chain, each with its own defaults, gives the same pixels (within 1/255 in 8 bits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pisa_core.cli.main import main
from pisa_core.files.images import read_image
from pisa_core.inference.pipeline import PiSAPipeline


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 100×75 8-bit photo-like image, as a file and as the tensor every front end sees."""
    g = np.random.default_rng(5)
    coarse = Image.fromarray((g.random((12, 16, 3)) * 255).astype(np.uint8))
    image = coarse.resize((100, 75), Image.BICUBIC)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    image.save(path)
    return path, torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None]


def to_8bit(image: torch.Tensor) -> np.ndarray:
    return np.floor(image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.int16)


def test_every_front_end_gives_the_same_picture_with_its_own_defaults(model_dir, photo, tmp_path, monkeypatch):
    from test_nodes import NODES

    (tmp_path / "diffusers").mkdir()
    (tmp_path / "diffusers" / "sd21-tiny").symlink_to(model_dir / "sd21-tiny", target_is_directory=True)
    (tmp_path / "pisa_sr").mkdir()
    (tmp_path / "pisa_sr" / "pisa_sr.pkl").symlink_to(model_dir / "pisa_sr.pkl")
    monkeypatch.setenv("PISA_SR_MODELS_DIR", str(tmp_path))

    path, image = photo
    base, weights = model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl"
    results = {}
    out = tmp_path / "cli.png"
    assert main(["upscale", str(path), "-o", str(out), "--base", str(base), "--weights", str(weights)]) == 0
    results["cli"] = to_8bit(read_image(out)[0][None])
    results["api"] = to_8bit(PiSAPipeline.from_files(base, weights)(image))

    def widget_defaults(cls, section="required") -> dict:
        info = cls.GET_NODE_INFO_V1()["input"].get(section, {})
        return {name: opts[1]["default"] for name, opts in info.items() if len(opts) > 1 and "default" in opts[1]}

    loader = NODES["PiSALoader"]
    model = loader.execute("[diffusers] sd21-tiny", "pisa_sr.pkl", widget_defaults(loader)["dtype"])[0]

    def defaults(node_id, **given):
        """Call a node with its widgets at their defaults, as a freshly placed node in ComfyUI."""
        cls = NODES[node_id]
        return cls.execute(**{**widget_defaults(cls), **given})[0]

    results["upscale node"] = to_8bit(defaults("PiSAUpscale", pisa_model=model, image=image))
    latent = defaults("PiSAEncode", pisa_model=model, image=image)
    guided = defaults("PiSADualGuidance", pisa_model=model, latent=latent)
    results["four nodes"] = to_8bit(defaults("PiSADecode", pisa_model=model, latent=guided))

    assert results["cli"].shape == (1, 300, 400, 3)
    for name, result in results.items():
        assert result.shape == results["cli"].shape, name
        assert np.abs(result - results["cli"]).max() <= 1, name
