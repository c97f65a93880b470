"""PiSALoader's `decoder` input: the base model's VAE by default, or a fast decoder file found in
models/pisa_sr by its content (tests/decoder_files.py writes one in the published layout)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from comfy_stub import runtime
from decoder_files import published_config, published_decoder, write_published
from test_nodes import NODES, PiSAError, decode, encode, guide, image, inputs, model_folders, models_root, pisa_model  # noqa: F401 - the model-folder fixtures

fast_decoder = sys.modules["pisa_sr_pack_under_test.pisa_core.model.fast_decoder"]
host_module = sys.modules["pisa_sr_pack_under_test.nodes.host"]
BASE = fast_decoder.BASE_DECODER
LOADER = NODES["PiSALoader"]
DIFFUSERS = "[diffusers] sd21-tiny"


@pytest.fixture(scope="module")
def decoder_files(models_root):  # noqa: F811
    """A published-layout .pth, its .safetensors form, and one whose config contradicts its tensors
    (recognised as a decoder by its names, refused when read), in models/pisa_sr."""
    folder = models_root / "pisa_sr"
    reference = published_decoder(seed=3)
    pth = write_published(folder / "sd21_lwdecoder.pth", reference, epoch=7)
    fast_decoder.convert_decoder(pth, folder / "sub" / "lwdecoder.safetensors")
    lying = write_published(folder / "lying.pth", reference, {**published_config(), "block_out_channels": [8, 8, 8, 8]})
    yield {"pth": pth, "lying": lying}
    for path in (pth, lying, folder / "sub" / "lwdecoder.safetensors"):
        path.unlink()
    (folder / "sub").rmdir()


def choices(name: str) -> list[str]:
    return LOADER.GET_NODE_INFO_V1()["input"]["required" if name == "pisa_weights" else "optional"][name][1]["options"]


def test_the_decoder_is_the_loaders_last_input_optional_with_the_base_vae_by_default():
    last = inputs(LOADER)[-1]
    assert last[:3] == ("optional", "decoder", "COMBO") and last[3]["default"] == BASE
    assert "advanced" not in last[3]  # a real choice, shown with the model files
    tooltip = last[3]["tooltip"]
    assert "\n" not in tooltip and "models/pisa_sr" in tooltip and "2604.03225" in tooltip
    assert "not measured on PiSA-SR outputs" in tooltip


def test_without_a_decoder_file_only_the_base_vae_is_offered():
    assert choices("decoder") == [BASE]


def test_decoder_files_are_listed_as_decoders_not_as_weights(decoder_files):
    assert choices("decoder") == [BASE, "lying.pth", "sd21_lwdecoder.pth", "sub/lwdecoder.safetensors"]
    assert choices("pisa_weights") == ["pisa_sr.pkl", "pisa_sr.safetensors"]


def test_inside_comfyui_the_model_folder_lists_decoder_files_too(decoder_files, models_root, tmp_path,  # noqa: F811
                                                                 monkeypatch):
    """ComfyUI lists a folder's files by its registered extensions: .pth must be one of pisa_sr's."""
    *_, fp = runtime("0.33", str(tmp_path))
    fp.add_model_folder_path("pisa_sr", str(models_root / "pisa_sr"))  # as extra_model_paths.yaml: no extensions
    fp.folder_names_and_paths["pisa_sr"][1].add(".pkl")
    comfy = host_module.ComfyHost(*runtime("0.33", str(tmp_path))[:3], fp)
    comfy.register_model_folders()
    monkeypatch.setattr(host_module, "HOST", comfy)
    assert choices("decoder") == [BASE, "lying.pth", "sd21_lwdecoder.pth", "sub/lwdecoder.safetensors"]
    assert choices("pisa_weights") == ["pisa_sr.pkl", "pisa_sr.safetensors"]


@pytest.fixture(scope="module")
def fast_model(decoder_files):
    os.environ["PISA_SR_MODELS_DIR"] = str(decoder_files["pth"].parents[1])
    try:
        return LOADER.execute(DIFFUSERS, "pisa_sr.pkl", "fp32", False, "sd21_lwdecoder.pth")[0]
    finally:
        del os.environ["PISA_SR_MODELS_DIR"]


def test_the_loaded_decoder_decodes_as_the_api_with_the_same_file(fast_model, pisa_model, decoder_files, model_dir):  # noqa: F811
    from pisa_core.inference.pipeline import PiSAPipeline

    api = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32",
                                  decoder=decoder_files["pth"])
    z = torch.randn(1, 4, 8, 10, generator=torch.Generator().manual_seed(1))
    ours = decode(fast_model, {"samples": z}, "none")
    expected = (api.decode(z) * 0.5 + 0.5).permute(0, 2, 3, 1).cpu()
    assert ours.shape == (1, 64, 80, 3)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert fast_model.pipe.decoder.name == "sd21_lwdecoder.pth" and pisa_model.pipe.decoder is None
    assert not torch.allclose(ours, decode(pisa_model, {"samples": z}, "none"), atol=1e-2)


def test_upscale_and_grid_use_the_decoder_the_model_carries(fast_model):
    img = image(16, 20, seed=4)
    chain = decode(fast_model, guide(fast_model, encode(fast_model, img), 0.5, 1.0), "adain")
    one = NODES["PiSAUpscale"].execute(fast_model, img, 4.0, 0.5, 1.0, "adain", "bicubic", 96, 32, 1024, 0)[0]
    assert torch.allclose(one, chain, atol=1e-5)
    _, cells = NODES["PiSAGuidanceGrid"].execute(fast_model, encode(fast_model, img), "0.5", "1.0", "adain", 128,
                                                 96, 32, 1024)
    assert torch.allclose(cells[0], chain[0], atol=1e-5)


def test_the_default_is_the_base_vae_and_the_cache_tells_decoders_apart(fast_model, pisa_model, decoder_files):  # noqa: F811
    assert LOADER.execute(DIFFUSERS, "pisa_sr.pkl", "fp32", False, BASE)[0] is pisa_model  # as saved workflows load
    assert LOADER.execute(DIFFUSERS, "pisa_sr.pkl", "fp32", False, "sd21_lwdecoder.pth")[0] is fast_model
    assert fast_model is not pisa_model and fast_model.key != pisa_model.key
    other = LOADER.execute(DIFFUSERS, "pisa_sr.pkl", "fp32", False, "sub/lwdecoder.safetensors")[0]
    assert other is not fast_model and other.pipe.decoder.format == "pisa-safetensors"

    def fingerprint(decoder=None):
        return LOADER.fingerprint_inputs(DIFFUSERS, "pisa_sr.pkl", "fp32", False, *([decoder] if decoder else []))

    assert fingerprint() == fingerprint(BASE) != fingerprint("sd21_lwdecoder.pth")
    first = fingerprint("sd21_lwdecoder.pth")
    stat = decoder_files["pth"].stat()
    try:  # a replaced decoder file loads again
        os.utime(decoder_files["pth"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert fingerprint("sd21_lwdecoder.pth") != first
    finally:
        os.utime(decoder_files["pth"], ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_bad_decoder_file_is_one_sentence_before_the_base_model_loads(decoder_files, models_root, tmp_path):  # noqa: F811
    broken_base = models_root / "checkpoints" / "broken.safetensors"
    broken_base.write_bytes(b"\x00" * 64)  # the base model's own error would name this file
    data = decoder_files["pth"].read_bytes()
    truncated = models_root / "pisa_sr" / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    try:
        for name in ("lying.pth", "truncated.pth"):
            with pytest.raises(PiSAError) as info:
                LOADER.execute("broken.safetensors", "pisa_sr.pkl", "fp32", False, name)
            message = str(info.value)
            assert name in message and "broken.safetensors" not in message and "\n" not in message, message
        with pytest.raises(PiSAError, match="missing.pth"):
            LOADER.execute(DIFFUSERS, "pisa_sr.pkl", "fp32", False, "missing.pth")
        assert LOADER.fingerprint_inputs(DIFFUSERS, "pisa_sr.pkl", "fp32", False, "missing.pth")[0] is None
    finally:
        broken_base.unlink()
        truncated.unlink()
