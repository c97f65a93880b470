"""The ComfyUI node pack, run directly (no ComfyUI) on tiny SD2-structured models written to disk.

The pack is loaded the way ComfyUI loads a custom-node folder: the repository root as a package
under its folder name, so its relative imports and node registry are what ComfyUI sees.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from comfy_stub import install_v3_api

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).with_name("test_nodes_schema.json")
NODE_IDS = ["PiSALoader", "PiSAEncode", "PiSADualGuidance", "PiSADecode", "PiSAUpscale", "PiSAGuidanceGrid"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FILE_LISTS = ("base_model", "pisa_weights", "decoder")  # choices that depend on the model folders


def load_pack(name: str):
    """Import the repository root as ComfyUI does (spec from <folder>/__init__.py under `name`)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def registered_nodes(pack) -> dict:
    """What ComfyUI registers: comfy_entrypoint's extension, its node list, each schema's node id."""
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # ComfyUI would then never call comfy_entrypoint
    extension = asyncio.run(pack.comfy_entrypoint())
    asyncio.run(extension.on_load())
    return {cls.GET_NODE_INFO_V1()["name"]: cls for cls in asyncio.run(extension.get_node_list())}


install_v3_api("0.33")
PACK = load_pack("pisa_sr_pack_under_test")
NODES = registered_nodes(PACK)
host = sys.modules["pisa_sr_pack_under_test.nodes.host"]
PiSAError = sys.modules["pisa_sr_pack_under_test.pisa_core.errors"].PiSAError
plan_passes = sys.modules["pisa_sr_pack_under_test.pisa_core.inference.guidance"].plan_passes
options = sys.modules["pisa_sr_pack_under_test.pisa_core.options"]


def inputs(cls) -> list[tuple[str, str, str, dict]]:
    """(section, name, type, settings) of a node's V1 info, in order."""
    info = cls.GET_NODE_INFO_V1()
    return [(section, name, *info["input"][section][name]) for section in ("required", "optional")
            for name in info["input_order"].get(section, [])]


def schema_of(info: dict) -> dict:
    """The frozen part of a node's V1 info (as /object_info serves it): inputs in order with type,
    default and choices (file lists excluded), and the outputs."""
    out = {"required": [], "optional": []}
    for section, items in out.items():
        for name in info["input_order"].get(section, []):
            kind, *rest = info["input"][section][name]
            settings = rest[0] if rest else {}
            entry = {"name": name, "type": kind}
            if kind == "COMBO" and name not in FILE_LISTS:
                entry["choices"] = list(settings["options"])
            if "default" in settings:
                entry["default"] = settings["default"]
            items.append(entry)
    out["outputs"] = list(info["output"])
    return out


def node_schema(cls) -> dict:
    return schema_of(cls.GET_NODE_INFO_V1())


def current_schema() -> dict:
    return {node_id: node_schema(NODES[node_id]) for node_id in NODES}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def models_root(model_dir, tmp_path_factory):
    """The ComfyUI model-folder layout, by user-facing names, over the session's tiny files."""
    root = tmp_path_factory.mktemp("comfy_models")
    (root / "checkpoints").mkdir()
    (root / "diffusers").mkdir()
    (root / "pisa_sr").mkdir()
    (root / "checkpoints" / "v2-1_512-ema-pruned.safetensors").symlink_to(model_dir / "sd21-tiny.safetensors")
    (root / "diffusers" / "sd21-tiny").symlink_to(model_dir / "sd21-tiny", target_is_directory=True)
    (root / "pisa_sr" / "pisa_sr.pkl").symlink_to(model_dir / "pisa_sr.pkl")
    (root / "pisa_sr" / "pisa_sr.safetensors").symlink_to(model_dir / "pisa_sr.safetensors")
    return root


@pytest.fixture(autouse=True)
def model_folders(models_root, monkeypatch):
    monkeypatch.setenv("PISA_SR_MODELS_DIR", str(models_root))
    host.HOST.request_interrupt(False)


@pytest.fixture(scope="module")
def pisa_model(models_root):
    os.environ["PISA_SR_MODELS_DIR"] = str(models_root)
    try:
        return NODES["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp32")[0]
    finally:
        del os.environ["PISA_SR_MODELS_DIR"]


def core_guided(pipe, z, lambda_pix, lambda_sem):
    """The pipeline's own predict_eps + guide for a latent, without any node."""
    eps = pipe.predict_eps(z, need=plan_passes(lambda_pix, lambda_sem).branches)
    return pipe.guide(z, eps, lambda_pix, lambda_sem)


def image(h=24, w=20, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, h // 4), max(2, w // 4), generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).contiguous()


def encode(model, img, upscale=4.0, resampling="bicubic", vae_tile=0, process_size=0):
    """process_size 0 keeps the tiny test images tiny (the 512 rule has its own test)."""
    return NODES["PiSAEncode"].execute(model, img, upscale, resampling, vae_tile, process_size)[0]


def guide(model, latent, lp=1.0, ls=1.0, tile=96, overlap=32):
    return NODES["PiSADualGuidance"].execute(model, latent, lp, ls, tile, overlap)[0]


def decode(model, latent, color_fix="adain", vae_tile=0, reference=None):
    return NODES["PiSADecode"].execute(model, latent, color_fix, vae_tile, reference)[0]


# ------------------------------------------------------------------ registry and schema


@pytest.mark.parametrize("folder", ["pisa-sr", "comfyui-pisa-sr", "ComfyUI-PiSA-SR"])
def test_pack_imports_under_any_folder_name(folder):
    assert list(registered_nodes(load_pack(folder))) == NODE_IDS


def test_nodes_are_v3_classes_named_like_their_ids():
    """ComfyUI-Manager's scanner finds a V3 node by its direct base io.ComfyNode and a literal node_id."""
    import inspect

    io = sys.modules["comfy_api.latest"].io
    for node_id, cls in NODES.items():
        assert cls.__name__ == node_id and cls.__bases__ == (io.ComfyNode,), node_id
        assert f'node_id="{node_id}"' in inspect.getsource(cls.define_schema), node_id
        state = [k for k, v in vars(cls).items() if not k.startswith("__") and not isinstance(v, classmethod)]
        assert not state, f"{node_id} holds state: {state}"


def test_every_node_has_category_description_and_tooltips():
    for node_id, cls in NODES.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["category"] == "image/upscaling/PiSA-SR", node_id
        assert info["display_name"].startswith("PiSA-SR "), node_id
        assert isinstance(info["description"], str) and len(info["description"]) > 20, node_id
        assert all(info["output_tooltips"]), node_id
        for _, name, _, settings in inputs(cls):
            assert settings.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_schema_snapshot_is_frozen():
    """Node ids, input names, order, types, defaults, choices and outputs are today's exactly
    (saved workflows store widget values by position); new inputs may only be appended as optional."""
    frozen = json.loads(SNAPSHOT.read_text())
    now = current_schema()
    assert list(now)[:len(frozen)] == list(frozen)
    for node_id, old in frozen.items():
        assert now[node_id]["required"] == old["required"], f"{node_id} required inputs changed"
        assert now[node_id]["optional"][:len(old["optional"])] == old["optional"], f"{node_id} optional inputs changed"
        assert now[node_id]["outputs"] == old["outputs"], f"{node_id} outputs changed"


def test_output_names_are_kept():
    names = {node_id: cls.GET_NODE_INFO_V1()["output_name"] for node_id, cls in NODES.items()}
    assert names == {"PiSALoader": ["pisa_model"], "PiSAEncode": ["latent"], "PiSADualGuidance": ["latent"],
                     "PiSADecode": ["image"], "PiSAUpscale": ["image"], "PiSAGuidanceGrid": ["sheet", "images"]}


def test_execute_accepts_inputs_by_name():
    """ComfyUI calls execute with keyword arguments named like the inputs."""
    import inspect

    for node_id, cls in NODES.items():
        params = inspect.signature(cls.execute).parameters
        for _, name, _, _ in inputs(cls):
            assert name in params, f"{node_id}.execute lacks parameter {name}"


# ------------------------------------------------------------------ example workflows (templates)

EXAMPLES = ROOT / "example_workflows"
CORE_NODES = {"LoadImage", "SaveImage", "PreviewImage", "ImageScaleBy", "ImageStitch", "MarkdownNote", "Note"}


def _widgets(cls) -> list[tuple[str, str, dict]]:
    return [(name, kind, settings) for _, name, kind, settings in inputs(cls) if kind in WIDGET_TYPES]


def _optional(cls) -> set[str]:
    return {name for section, name, _, _ in inputs(cls) if section == "optional"}


def _sockets(cls) -> dict[str, str]:
    return {name: kind for _, name, kind, _ in inputs(cls) if kind not in WIDGET_TYPES}


@pytest.mark.parametrize("name", ["pisa_sr_basic", "pisa_sr_adjustable", "pisa_sr_grid", "pisa_sr_regions"])
def test_example_workflow_matches_the_node_schemas(name):
    from PIL import Image

    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    with Image.open(EXAMPLES / f"{name}.jpg") as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 512
    assert (EXAMPLES / f"{name}.jpg").stat().st_size < 100_000
    nodes = {n["id"]: n for n in workflow["nodes"]}
    used = {n["type"] for n in nodes.values()}
    assert used - CORE_NODES <= set(NODES), f"unknown node ids {used - CORE_NODES - set(NODES)}"
    assert {"PiSALoader", "PiSAEncode", "LoadImage"} <= used
    for node in nodes.values():
        cls = NODES.get(node["type"])
        if cls is None:
            continue
        widgets = _widgets(cls)
        assert len(node["widgets_values"]) <= len(widgets), (name, node["type"])
        for wname, _, opts in widgets[len(node["widgets_values"]):]:  # added since: optional, their default applies
            assert wname in _optional(cls) and "default" in opts, (name, node["type"], wname)
        for (wname, kind, opts), value in zip(widgets, node["widgets_values"]):
            if kind == "COMBO" and wname not in FILE_LISTS:
                assert value in opts["options"], (name, node["type"], wname, value)
            if kind in ("INT", "FLOAT"):
                assert opts["min"] <= value <= opts["max"], (name, node["type"], wname, value)
        sockets = _sockets(cls)
        assert [i["name"] for i in node["inputs"]] == list(sockets)[:len(node["inputs"])], (name, node["type"])
        assert [o["type"] for o in node["outputs"]] == cls.GET_NODE_INFO_V1()["output"], (name, node["type"])
    loader = next(n for n in nodes.values() if n["type"] == "PiSALoader")
    assert loader["widgets_values"][:2] == ["v2-1_512-ema-pruned.safetensors", "pisa_sr.pkl"]
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind and link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["type"] == kind and nodes[dst]["inputs"][dst_slot]["link"] == link_id
    for node in nodes.values():  # every required socket of our nodes is connected
        cls = NODES.get(node["type"])
        if cls is not None:
            required = [k for section, k, _, _ in inputs(cls) if section == "required" and k in _sockets(cls)]
            linked = {i["name"] for i in node["inputs"] if i["link"] is not None}
            assert set(required) <= linked, (name, node["type"])


# ------------------------------------------------------------------ loader


def test_loader_lists_checkpoints_diffusers_folders_and_pisa_weights():
    spec = NODES["PiSALoader"].GET_NODE_INFO_V1()["input"]["required"]
    assert spec["base_model"][1]["options"] == ["v2-1_512-ema-pruned.safetensors", "[diffusers] sd21-tiny"]
    assert spec["pisa_weights"][1]["options"] == ["pisa_sr.pkl", "pisa_sr.safetensors"]


def test_pisa_weights_in_the_loras_folder_are_recognised_by_their_keys(model_dir, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    loras = tmp_path / "loras"
    (loras / "sub").mkdir(parents=True)
    (loras / "renamed.pkl").write_bytes((model_dir / "pisa_sr.pkl").read_bytes())
    (loras / "sub" / "ours.safetensors").write_bytes((model_dir / "pisa_sr.safetensors").read_bytes())
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8)}, str(loras / "pisa_sr_style.safetensors"))
    torch.save({"state_dict": {"w": torch.zeros(2)}}, loras / "pisa_sr_other.pkl")
    (loras / "broken.safetensors").write_bytes(b"\x00" * 32)
    (tmp_path / "diffusers").symlink_to(model_dir, target_is_directory=True)
    monkeypatch.setenv("PISA_SR_MODELS_DIR", str(tmp_path))
    choices = NODES["PiSALoader"].GET_NODE_INFO_V1()["input"]["required"]["pisa_weights"][1]["options"]
    assert choices == ["[loras] renamed.pkl", "[loras] sub/ours.safetensors"]  # by contents, not by name
    model = NODES["PiSALoader"].execute("[diffusers] sd21-tiny", "[loras] renamed.pkl", "fp32")[0]
    assert model.pipe.weights_source.endswith("renamed.pkl")


def test_loader_returns_the_cached_model_for_the_same_files(pisa_model):
    again = NODES["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp32")[0]
    assert again is pisa_model
    other = NODES["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.safetensors", "fp32")[0]
    assert other is not pisa_model


def test_single_file_checkpoint_and_diffusers_folder_give_the_same_result(pisa_model):
    auto = NODES["PiSALoader"].execute("v2-1_512-ema-pruned.safetensors", "pisa_sr.safetensors", "auto")[0]
    hardware = sys.modules["pisa_sr_pack_under_test.pisa_core.inference.hardware"]
    assert auto.pipe.dtype == hardware.auto_dtype(torch.device("cpu"))  # the CLI's and the API's rule
    single = NODES["PiSALoader"].execute("v2-1_512-ema-pruned.safetensors", "pisa_sr.safetensors", "fp32")[0]
    img = image()
    a = decode(pisa_model, guide(pisa_model, encode(pisa_model, img)))
    b = decode(single, guide(single, encode(single, img)))
    assert a.shape == b.shape
    assert (a - b).abs().max() < 2e-3, (a - b).abs().max()


def test_missing_model_file_is_one_clear_sentence():
    with pytest.raises(PiSAError) as info:
        NODES["PiSALoader"].execute("nope.safetensors", "pisa_sr.pkl", "fp32")
    message = str(info.value)
    assert "nope.safetensors" in message and "checkpoints" in message
    assert "\n" not in message and message.endswith(".")


def test_wrong_dtype_is_rejected():
    with pytest.raises(PiSAError, match="dtype"):
        NODES["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp64")


# ------------------------------------------------------------------ encode / guidance / decode


def test_encode_latent_is_the_plain_unscaled_vae_latent(pisa_model, model_dir):
    """LATENT interoperability: ComfyUI's VAE Decode does vae.decode(samples); a plain diffusers
    decode of our samples gives the same image as PiSA Decode without colour fix."""
    from diffusers import AutoencoderKL

    img = image(16, 16)
    latent = encode(pisa_model, img, 4.0)
    z = latent["samples"]
    assert z.shape == (1, 4, 8, 8) and z.dtype == torch.float32
    vae = AutoencoderKL.from_pretrained(model_dir / "sd21-tiny" / "vae").eval()
    with torch.no_grad():
        plain = vae.decode(z).sample.clamp(-1, 1) * 0.5 + 0.5
        posterior = vae.encode(torch.nn.functional.interpolate(
            img.permute(0, 3, 1, 2), size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1)
    ours = decode(pisa_model, latent, "none").permute(0, 3, 1, 2)
    assert torch.allclose(plain, ours, atol=1e-4)
    assert torch.allclose(posterior.latent_dist.mean, z, atol=1e-4)


def test_batches_match_single_images(pisa_model):
    imgs = image(16, 20, batch=2, seed=3)
    batch_out = decode(pisa_model, guide(pisa_model, encode(pisa_model, imgs), 0.8, 1.2))
    singles = [decode(pisa_model, guide(pisa_model, encode(pisa_model, imgs[i:i + 1]), 0.8, 1.2)) for i in range(2)]
    assert batch_out.shape == (2, 64, 80, 3)
    assert torch.allclose(batch_out, torch.cat(singles), atol=1e-5)


def test_lambda_change_runs_no_unet_pass_and_matches_the_pipeline(pisa_model):
    latent = encode(pisa_model, image(16, 16, seed=5))
    guide(pisa_model, latent, 1.0, 1.0)
    calls = pisa_model.unet_calls
    for lp, ls in [(0.7, 1.3), (1.0, 0.0), (0.0, 0.0), (1.5, 0.5)]:
        out = guide(pisa_model, latent, lp, ls)["samples"]
        assert pisa_model.unet_calls == calls, f"λ=({lp}, {ls}) ran the UNet"
        expected = core_guided(pisa_model.pipe, latent["samples"], lp, ls)  # the core, computed afresh
        assert torch.allclose(out, expected.cpu(), atol=1e-4, rtol=1e-4)  # batch of 2 vs 1: rounding only
        calls = pisa_model.unet_calls
    # a different tile setting is a different computation: it runs again
    guide(pisa_model, latent, 0.7, 1.3, tile=48, overlap=16)
    assert pisa_model.unet_calls > calls


def test_guidance_cache_is_bounded(pisa_model):
    cache = pisa_model.eps_cache
    for seed in range(cache.max_entries + 3):
        guide(pisa_model, {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))})
    assert len(cache) == cache.max_entries


def test_decode_gives_the_exact_output_size_and_colour_fix(pisa_model):
    img = image(13, 19, seed=7)  # 3× → 39×57: padded to 64×64 (a multiple of 8, at least 64), then cropped
    latent = guide(pisa_model, encode(pisa_model, img, 3.0))
    assert latent["samples"].shape[-2:] == (8, 8)
    for mode in options.COLOR_FIXES:
        out = decode(pisa_model, latent, mode)
        assert out.shape == (1, 39, 57, 3)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    for resampling in ("lanczos", "bilinear", "area", "nearest-exact"):
        out = decode(pisa_model, guide(pisa_model, encode(pisa_model, img, 2.5, resampling)), "adain")
        assert out.shape == (1, 32, 48, 3)


def test_small_outputs_work_at_process_size_and_come_back_to_size(pisa_model):
    img = image(10, 14, seed=8)  # 4× → 40×56, below process_size 64: worked at 64×90
    latent = encode(pisa_model, img, 4.0, process_size=64)
    assert latent["samples"].shape[-2:] == (8, 12)  # 64×90 padded to 64×96
    out = decode(pisa_model, guide(pisa_model, latent), "adain")
    assert out.shape == (1, 40, 56, 3)


def test_explicit_colour_reference_equals_the_encoded_one(pisa_model):
    img = image(20, 24, seed=9)
    latent = guide(pisa_model, encode(pisa_model, img))
    assert torch.allclose(decode(pisa_model, latent, "adain"), decode(pisa_model, latent, "adain", reference=img), atol=1e-6)
    plain = {"samples": latent["samples"]}  # e.g. from ComfyUI's VAE Encode: no PiSA sizes
    untouched = decode(pisa_model, plain, "none")
    assert untouched.shape[1:3] == tuple(s * 8 for s in latent["samples"].shape[-2:])
    assert torch.equal(decode(pisa_model, plain, "adain"), untouched)  # no reference: fix skipped
    fixed = decode(pisa_model, plain, "adain", reference=img)
    assert fixed.shape == untouched.shape and not torch.allclose(fixed, untouched)


def test_upscale_node_equals_the_four_node_chain(pisa_model):
    img = image(20, 28, seed=11)
    for lp, ls in [(1.0, 1.0), (0.6, 1.4)]:
        one = NODES["PiSAUpscale"].execute(pisa_model, img, 4.0, lp, ls, "wavelet", "bicubic", 96, 32, 1024, 0)[0]
        chain = decode(pisa_model, guide(pisa_model, encode(pisa_model, img), lp, ls), "wavelet")
        assert one.shape == (1, 80, 112, 3)
        assert torch.allclose(one, chain, atol=1e-5)


def test_grid_costs_two_branch_passes_and_matches_single_settings(pisa_model):
    img = image(16, 16, seed=13)
    latent = encode(pisa_model, img)
    pisa_model.eps_cache.clear()
    before = pisa_model.unet_calls
    sheet, results = NODES["PiSAGuidanceGrid"].execute(pisa_model, latent, "0.5, 1.0, 1.5", "0, 1", "adain", 128,
                                                      96, 32, 1024)
    assert pisa_model.unet_calls - before == 1  # one batch of two (ε_pix, ε_PiSA) for the untiled latent
    assert results.shape == (6, 64, 64, 3)
    assert sheet.shape[0] == 1 and sheet.shape[-1] == 3 and sheet.shape[2] == 3 * 64
    assert sheet.shape[1] > 2 * 64  # two rows of cells plus their label bands
    single = decode(pisa_model, guide(pisa_model, latent, 1.5, 0.0), "adain")
    assert torch.allclose(results[2], single[0], atol=1e-5)  # row λ_sem=0, column λ_pix=1.5


def test_grid_rejects_bad_lists(pisa_model):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(PiSAError, match="lambda_pix_values"):
        NODES["PiSAGuidanceGrid"].execute(pisa_model, latent, "a, b", "1", "none", 0, 96, 32, 1024)


def test_errors_are_one_sentence(pisa_model):
    cases = [
        lambda: guide(pisa_model, {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, 1.0, 32, 32),
        lambda: guide(pisa_model, {"samples": torch.zeros(1, 16, 8, 8)}),
        lambda: guide(pisa_model, torch.zeros(1, 4, 8, 8)),
        lambda: encode(pisa_model, image(8, 8), 2000.0),
        lambda: encode("not a model", image(8, 8)),
        lambda: NODES["PiSAEncode"].execute(pisa_model, torch.zeros(8, 8, 3), 4.0, "bicubic", 1024),
    ]
    for case in cases:
        with pytest.raises(PiSAError) as info:
            case()
        assert "\n" not in str(info.value) and str(info.value).endswith(".")


# ------------------------------------------------------------------ good citizen: OOM, cancel, progress


def _oom_above(module, limit):
    def hook(mod, args):
        if args[0].shape[-1] > limit:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
    return module.register_forward_pre_hook(hook)


def test_out_of_memory_halves_the_tile_then_fails_clearly(pisa_model):
    latent = encode(pisa_model, image(64, 64, seed=21))  # latent 32×32: one 32-tile, or 16-tiles
    handle = _oom_above(pisa_model.pipe.unet.unet, 16)
    try:
        out = guide(pisa_model, latent, 0.9, 1.1, tile=32, overlap=8)["samples"]
        assert torch.isfinite(out).all() and out.shape == latent["samples"].shape
    finally:
        handle.remove()
    handle = _oom_above(pisa_model.pipe.unet.unet, 0)
    try:
        with pytest.raises(PiSAError, match="Out of memory in the UNet"):
            guide(pisa_model, encode(pisa_model, image(16, 16, seed=22)), 0.9, 1.1, tile=16, overlap=8)
    finally:
        handle.remove()


def test_cancel_stops_and_the_next_run_works(pisa_model):
    latent = encode(pisa_model, image(16, 16, seed=31))
    host.HOST.request_interrupt(True)
    with pytest.raises(host.Interrupted):
        guide(pisa_model, latent, 0.5, 1.5)
    out = guide(pisa_model, latent, 0.5, 1.5)["samples"]
    assert torch.allclose(out, core_guided(pisa_model.pipe, latent["samples"], 0.5, 1.5).cpu(), atol=1e-5)


if __name__ == "__main__":  # regenerate the snapshot ONLY when adding new inputs at the end
    SNAPSHOT.write_text(json.dumps(current_schema(), indent=1) + "\n")
