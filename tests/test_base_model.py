"""Loading SD2.1-base offline: diffusers folder and single-file checkpoints, wrong-base rejection."""

from __future__ import annotations

import gc
from pathlib import Path

import model_files as mf
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as oracle
from tiny_models import tiny_unet, tiny_vae
from transformers import CLIPTextConfig, CLIPTextModel

from pisa_core.errors import PiSAError
from pisa_core.model import ldm_convert as ldm
from pisa_core.model.base import (
    check_diffusers_folder,
    empty_prompt_ids,
    encode_prompts,
    load_base_model,
)


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """Tiny models run fastest on one thread; on a busy machine with few cores torch's default
    thread pool spins and makes these tests ~100x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts():
    return tiny_unet(seed=3), tiny_vae(seed=3), mf.sd2_text_encoder(seed=3)


@pytest.fixture(scope="module")
def files(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    return {
        "diffusers": mf.write_diffusers_folder(root / "sd21", *parts),
        "safetensors": mf.write_single_file(root / "sd21.safetensors", *parts),
        "ckpt": mf.write_single_file(root / "sd21.ckpt", *parts, fmt="ckpt"),
    }


def unet_out(unet, embeds):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        return unet(sample, torch.tensor([1]), encoder_hidden_states=embeds).sample


def vae_out(vae):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        return z, vae.decode(z).sample


def reference_embeds(text_encoder):
    ids = empty_prompt_ids(text_encoder.config.vocab_size, text_encoder.config.max_position_embeddings)
    with torch.no_grad():
        return text_encoder(input_ids=ids)[0]


def assert_same_weights(model, reference):
    ours, ref = model.state_dict(), reference.state_dict()
    assert ours.keys() == ref.keys()
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key


# --------------------------------------------------------------------------- good sources


@pytest.mark.parametrize("source", ["diffusers", "safetensors", "ckpt"])
def test_every_source_loads_the_same_model(files, parts, source):
    unet, vae, text = parts
    base = load_base_model(files[source])
    assert base.kind == ("diffusers" if source == "diffusers" else "single-file")
    assert base.source == str(files[source])
    assert_same_weights(base.unet, unet)
    assert_same_weights(base.vae, vae)
    expected = reference_embeds(text)
    assert base.prompt_embeds.shape == (1, 77, text.config.hidden_size)
    assert base.prompt_embeds.dtype == torch.float32 and base.prompt_embeds.device.type == "cpu"
    assert torch.equal(base.prompt_embeds, expected)
    assert torch.equal(unet_out(base.unet, expected), unet_out(unet, expected))
    for ours, ref in zip(vae_out(base.vae), vae_out(vae)):
        assert torch.equal(ours, ref)
    assert base.scaling_factor == pytest.approx(0.18215)
    assert base.scheduler_config["prediction_type"] == "epsilon"
    assert not base.unet.training and not any(p.requires_grad for p in base.unet.parameters())
    assert not any(p.requires_grad for p in base.vae.parameters())


def test_folder_tokenizer_gives_the_rule_based_empty_prompt_ids(files, parts):
    base = load_base_model(files["diffusers"], keep_text_encoder=True)
    ids = base.tokenizer([""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, empty_prompt_ids(base.text_encoder.config.vocab_size))


def count_text_encoders():
    gc.collect()
    return sum(type(o) is CLIPTextModel for o in gc.get_objects())


@pytest.mark.parametrize("source", ["diffusers", "safetensors"])
def test_text_encoder_is_released_after_loading(files, source):
    before = count_text_encoders()
    base = load_base_model(files[source])
    assert base.text_encoder is None and base.tokenizer is None
    assert count_text_encoders() == before


def test_kept_text_encoder_from_folder_encodes_prompts(files):
    base = load_base_model(files["diffusers"], keep_text_encoder=True)
    assert isinstance(base.text_encoder, CLIPTextModel) and base.tokenizer is not None
    embeds = encode_prompts(base.text_encoder, base.tokenizer, ["", "a photo"])
    assert embeds.shape == (2, 77, base.text_encoder.config.hidden_size)
    assert torch.equal(embeds[:1], base.prompt_embeds)
    assert not torch.equal(embeds[1], embeds[0])


def test_kept_text_encoder_from_single_file_has_no_tokenizer(files):
    base = load_base_model(files["safetensors"], keep_text_encoder=True)
    assert isinstance(base.text_encoder, CLIPTextModel) and base.tokenizer is None
    assert base.text_encoder.config.num_hidden_layers == 2  # 3 stored, the last one unused
    assert torch.equal(encode_prompts(base.text_encoder, None, ["", ""]), base.prompt_embeds.repeat(2, 1, 1))
    with pytest.raises(PiSAError, match="tokenizer"):
        encode_prompts(base.text_encoder, None, ["a photo"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_is_honoured_and_no_float64(files, dtype):
    base = load_base_model(files["safetensors"], dtype=dtype, keep_text_encoder=True)
    for model in (base.unet, base.vae, base.text_encoder):
        tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
        assert {t.dtype for t in tensors} == {dtype}
    assert base.prompt_embeds.dtype == torch.float32


def test_no_float64_anywhere(files):
    for source in ("diffusers", "ckpt"):
        base = load_base_model(files[source], keep_text_encoder=True)
        for model in (base.unet, base.vae, base.text_encoder):
            assert all(t.dtype != torch.float64 for t in (*model.parameters(), *model.buffers()))


def test_float64_dtype_is_refused(files):
    with pytest.raises(PiSAError, match="dtype"):
        load_base_model(files["safetensors"], dtype=torch.float64)


def test_fp16_variant_folder_loads(parts, tmp_path):
    unet, vae, text = parts
    folder = mf.write_diffusers_folder(tmp_path / "fp16", unet, vae, text, variant="fp16")
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    base = load_base_model(folder)
    for ours, ref in ((base.unet, unet), (base.vae, vae)):
        for key, value in ref.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value.half().float()), key
    assert base.prompt_embeds.dtype == torch.float32


def test_unwrapped_ckpt_loads(parts, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(mf.ldm_state_dict(*parts), path)
    assert_same_weights(load_base_model(path).unet, parts[0])


# ------------------------------------------------------------ independent oracle for the writer


def test_written_ldm_keys_convert_with_diffusers_own_converter(parts):
    """The fixture writer inverts a mapping; check it with diffusers' single-file converter."""
    unet, vae, text = parts
    sd = mf.ldm_state_dict(unet, vae, text)
    fresh_unet = UNet2DConditionModel.from_config(unet.config)
    fresh_unet.load_state_dict(oracle.convert_ldm_unet_checkpoint(sd, dict(unet.config)), strict=True)
    embeds = reference_embeds(text)
    assert torch.equal(unet_out(fresh_unet.eval(), embeds), unet_out(unet, embeds))
    fresh_vae = AutoencoderKL.from_config(vae.config)
    fresh_vae.load_state_dict(oracle.convert_ldm_vae_checkpoint(sd, dict(vae.config)), strict=True)
    for ours, ref in zip(vae_out(fresh_vae.eval()), vae_out(vae)):
        assert torch.equal(ours, ref)
    # diffusers ignores the unused last resblock only by its SD2.1 index (23): drop it here
    layers = text.config.num_hidden_layers
    converted = {k.removeprefix("text_model."): v for k, v in oracle.convert_open_clip_checkpoint(text, sd).items()
                 if not k.startswith(f"text_model.encoder.layers.{layers}.") and k != "text_projection.weight"}
    fresh_text = CLIPTextModel(text.config)
    prefix = ldm.text_prefix_for(fresh_text)
    fresh_text.load_state_dict({prefix + k: v for k, v in converted.items()}, strict=True)
    assert torch.equal(reference_embeds(fresh_text.eval()), reference_embeds(text))


# ------------------------------------------------------- config inference at the real SD2.1 size


def test_real_size_configs_are_inferred_from_shapes():
    """Meta-device SD2.1-base components written in LDM layout infer back to the shipped configs."""
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(ldm.load_template("unet"))
        vae = AutoencoderKL.from_config(ldm.load_template("vae"))
        text = CLIPTextModel(CLIPTextConfig(**ldm.load_template("text_encoder")))
    unet_cfg = ldm.infer_unet_config(mf.ldm_unet_state(unet))
    for key, value in ldm.load_template("unet").items():
        assert unet_cfg[key] == value, key
    assert unet_cfg["attention_head_dim"] == [5, 10, 20, 20]
    vae_cfg = ldm.infer_vae_config(mf.ldm_vae_state(vae))
    for key, value in ldm.load_template("vae").items():
        assert vae_cfg[key] == value, key
    stored = {k: v for k, v in mf.ldm_text_state(text).items()}
    assert ldm.stored_text_layers(stored) == 24
    text_cfg = ldm.infer_text_config(stored)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                "max_position_embeddings", "vocab_size", "hidden_act"):
        assert text_cfg[key] == ldm.load_template("text_encoder")[key], key
    converted = ldm.convert_unet(mf.ldm_unet_state(unet), unet_cfg)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in unet.state_dict().items()}


# ---------------------------------------------------------------------------- wrong bases


def _base_sd(parts):
    return mf.ldm_state_dict(*parts)


WRONG_SINGLE_FILES = {
    "sd1": (lambda p: mf.sd1_like_state(), "CLIP-L"),
    "sdxl": (lambda p: mf.sdxl_like_state(_base_sd(p)), "SDXL"),
    "v_marker": (lambda p: mf.v_pred_marker_state(_base_sd(p)), "v_pred"),
    "v_heuristic": (lambda p: mf.v_pred_heuristic_state(_base_sd(p)), "norm1.bias"),
    "inpaint": (lambda p: mf.ldm_state_dict(tiny_unet(in_channels=9), p[1], p[2]), "inpainting"),
    "vae_only": (lambda p: mf.vae_only_state(_base_sd(p)), "only VAE"),
    "text_only": (lambda p: mf.text_only_state(_base_sd(p)), "only text-encoder"),
    "unknown": (lambda p: {"encoder.weight": torch.zeros(2, 2)}, "no Stable Diffusion UNet"),
    "conv_proj": (lambda p: mf.ldm_state_dict(tiny_unet(use_linear_projection=False), p[1], p[2]), "convolutional"),
    "latent8": (lambda p: mf.ldm_state_dict(p[0], mf.vae_with(latent_channels=8), p[2]), "8 latent channels"),
    "cross_width": (lambda p: mf.ldm_state_dict(tiny_unet(cross_attention_dim=48), p[1], p[2]),
                    "cross-attention width 48"),
    "no_vae": (lambda p: {k: v for k, v in _base_sd(p).items() if not k.startswith("first_stage")}, "no VAE"),
    "no_text": (lambda p: {k: v for k, v in _base_sd(p).items() if not k.startswith("cond_stage")}, "no OpenCLIP"),
}


# every case as .safetensors; the format does not change the structure check, so a few as .ckpt
@pytest.mark.parametrize("case, fmt", [(c, "safetensors") for c in sorted(WRONG_SINGLE_FILES)]
                         + [(c, "ckpt") for c in ("sd1", "v_marker", "vae_only")])
def test_wrong_single_file_is_rejected(parts, tmp_path, case, fmt):
    build, finding = WRONG_SINGLE_FILES[case]
    path = mf.save_state_dict(build(parts), tmp_path / f"{case}.{fmt}", fmt)
    with pytest.raises(PiSAError) as err:
        load_base_model(path)
    message = str(err.value)
    assert path.name in message and finding in message and "\n" not in message


def _folder(tmp_path, parts, name, **overrides):
    unet, vae, text = parts
    return mf.write_diffusers_folder(tmp_path / name, overrides.get("unet", unet), vae,
                                     overrides.get("text", text), prediction_type=overrides.get("pred", "epsilon"))


@pytest.mark.parametrize("case, finding", [
    ("v_prediction", "v_prediction"),
    ("inpaint", "inpainting"),
    ("sd1", "convolutional"),
    ("sdxl", "SDXL"),
    ("cross_width", "cross-attention width 48"),
    ("missing_unet", "unet/config.json is missing"),
])
def test_wrong_diffusers_folder_is_rejected(parts, tmp_path, case, finding):
    if case == "v_prediction":
        folder = _folder(tmp_path, parts, case, pred="v_prediction")
    elif case == "inpaint":
        folder = _folder(tmp_path, parts, case, unet=tiny_unet(in_channels=9))
    elif case == "sd1":
        folder = _folder(tmp_path, parts, case, unet=mf.sd1_like_unet(), text=mf.sd2_text_encoder(width=768, layers=1))
    elif case == "cross_width":
        folder = _folder(tmp_path, parts, case, unet=tiny_unet(cross_attention_dim=48))
    else:
        folder = _folder(tmp_path, parts, case)
        if case == "sdxl":
            (folder / "text_encoder_2").mkdir()
        else:
            (folder / "unet" / "config.json").unlink()
    for check in (check_diffusers_folder, load_base_model):
        with pytest.raises(PiSAError) as err:
            check(folder)
        assert folder.name in str(err.value) and finding in str(err.value)


def test_good_folder_passes_the_check(files):
    check_diffusers_folder(files["diffusers"])


# -------------------------------------------------------------------- unreadable / unsafe files


class WritesMarker:
    """Unpickling this would call open(marker, "w"): executing code from the checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_and_not_executed(parts, tmp_path):
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": mf.ldm_state_dict(*parts), "callback": WritesMarker(marker)}, path)
    assert not marker.exists()
    with pytest.raises(PiSAError) as err:
        load_base_model(path)
    assert not marker.exists()
    assert path.name in str(err.value) and ".safetensors" in str(err.value)


@pytest.mark.parametrize("name, content, finding", [
    ("notes.txt", b"hello", "not a checkpoint"),
    ("garbage.safetensors", b"\x00" * 64, "is a file of unknown format (it starts with the bytes 00 00 00"),
    ("notes.ckpt", b"just some text", "is a text file, not a Stable Diffusion checkpoint"),
    ("garbage.ckpt", b"\x80\x02garbage", "corrupted or not a torch.save file"),
])
def test_non_checkpoint_files_are_rejected(tmp_path, name, content, finding):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PiSAError) as err:
        load_base_model(path)
    assert name in str(err.value) and finding in str(err.value)


def test_tensorless_ckpt_is_rejected(tmp_path):
    path = tmp_path / "empty.ckpt"
    torch.save({"global_step": 3}, path)
    with pytest.raises(PiSAError, match="holds no tensors"):
        load_base_model(path)


@pytest.mark.parametrize("name", ["missing_folder", "missing.safetensors"])
def test_missing_path_is_rejected(tmp_path, name):
    with pytest.raises(PiSAError, match="does not exist"):
        load_base_model(tmp_path / name)


def test_folder_without_weights_is_rejected(parts, tmp_path):
    folder = mf.write_diffusers_folder(tmp_path / "noweights", *parts)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PiSAError) as err:
        load_base_model(folder)
    assert "unet" in str(err.value) and "UNet2DConditionModel" in str(err.value)


@pytest.mark.parametrize("index", ['["a.safetensors"]', '{"weight_map": ["a.safetensors"]}',
                                   '{"weight_map": {"w": 3}}', '{"weight_map": {"w": "../../elsewhere.bin"}}'])
def test_a_damaged_weight_index_is_one_line(tmp_path, index):
    """A sharded component's index that is not a map of tensor names to shard files beside it."""
    from pisa_core.model.base import weight_files

    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(index)
    with pytest.raises(PiSAError, match="is not a readable weight index"):
        weight_files(tmp_path)
