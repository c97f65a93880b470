"""The node layer against what differs between ComfyUI hosts (0.3.64 and 0.33), on the CPU through
the one ComfyUI stand-in (comfy_stub.py): schema keywords only newer hosts accept, a host without
the V3 API, the memory manager's changed signatures, Cancel as an Exception or a BaseException.
The same behaviour on the real hosts: tests/integration."""

from __future__ import annotations

import logging
import os
import sys
import weakref

import pytest
import torch
from comfy_stub import HOSTS, install_v3_api, runtime, uninstall_v3_api
from test_nodes import (  # noqa: F401 - the model-folder fixtures
    NODES,
    current_schema,
    inputs,
    load_pack,
    model_folders,
    models_root,
    node_schema,
    registered_nodes,
)

stages = sys.modules["pisa_sr_pack_under_test.nodes.stages"]
host_module = sys.modules["pisa_sr_pack_under_test.nodes.host"]
model_module = sys.modules["pisa_sr_pack_under_test.nodes.model"]
ADVANCED = {"PiSALoader": ["dtype", "compile"], "PiSAEncode": ["resampling", "vae_tile", "process_size"],
            "PiSADualGuidance": ["latent_tile", "latent_overlap"], "PiSADecode": ["vae_tile"],
            "PiSAUpscale": ["resampling", "latent_tile", "latent_overlap", "vae_tile", "process_size"],
            "PiSAGuidanceGrid": ["latent_tile", "latent_overlap", "vae_tile"]}


@pytest.fixture()
def stub_host():
    """Install the V3 API stub of a host for one test; the suite's own stub afterwards (the very
    modules the pack under test was loaded with, so its node classes still derive from their io)."""
    saved = {name: sys.modules.get(name) for name in ("comfy_api", "comfy_api.latest")}

    def use(version):
        if not install_v3_api(version):
            pytest.skip("the real comfy_api is importable here; the host variants need the stub")
    yield use
    if all(saved.values()):
        sys.modules.update(saved)
    else:
        install_v3_api("0.33")


@pytest.mark.parametrize("version", HOSTS)
def test_the_schema_is_the_same_on_every_host_with_the_extras_where_they_exist(version, stub_host):
    stub_host(version)
    nodes = registered_nodes(load_pack(f"pisa_sr_on_{version.replace('.', '_')}"))
    newer = version != "0.3.64"
    assert {node_id: node_schema(cls) for node_id, cls in nodes.items()} == current_schema()  # frozen: test_nodes
    for node_id, cls in nodes.items():
        info = cls.GET_NODE_INFO_V1()
        assert (info["search_aliases"] is not None) == newer, node_id
        if newer:
            assert {"upscale", "super-resolution"} <= set(info["search_aliases"])
        folded = [name for _, name, _, settings in inputs(cls) if settings.get("advanced")]
        assert folded == (ADVANCED[node_id] if newer else []), node_id


def test_without_the_v3_api_the_pack_logs_one_clear_line_and_registers_nothing(caplog, stub_host):
    uninstall_v3_api()
    if "comfy_api" in sys.modules:
        pytest.skip("the real comfy_api is imported here")
    with caplog.at_level(logging.ERROR, logger="PiSA-SR"):
        pack = load_pack("pisa_sr_on_an_old_host")
    assert not hasattr(pack, "comfy_entrypoint") and not hasattr(pack, "NODE_CLASS_MAPPINGS")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "comfy_api.latest" in errors[0]
    assert "not registered" in errors[0]


# ------------------------------------------------------------------ validation and fingerprint


def test_tile_settings_are_rejected_when_the_prompt_is_queued():
    guide, grid = NODES["PiSADualGuidance"], NODES["PiSAGuidanceGrid"]
    assert guide.validate_inputs(latent_tile=96, latent_overlap=32) is True
    assert "latent_overlap (32) must be smaller than latent_tile (32)" in guide.validate_inputs(32, 32)
    assert "between 16 and 512" in guide.validate_inputs(1024, 32)
    assert guide.validate_inputs(None, 32) is True  # fed by a link: checked when the node runs
    assert "vae_tile" in NODES["PiSADecode"].validate_inputs(vae_tile=100)
    assert NODES["PiSAEncode"].validate_inputs(vae_tile=0) is True
    assert grid.validate_inputs("0.5, 1", "0, 1", 96, 32, 0) is True
    assert "lambda_pix_values" in grid.validate_inputs("a, b", "1", 96, 32, 0)
    assert "keep it to 64" in grid.validate_inputs(", ".join(["1"] * 9), ", ".join(["1"] * 8), 96, 32, 0)


def test_the_loader_runs_again_only_when_a_model_file_changed(models_root):  # noqa: F811
    loader = NODES["PiSALoader"]
    first = loader.fingerprint_inputs("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp32", False)
    assert first == loader.fingerprint_inputs("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp32", False)
    weights = (models_root / "pisa_sr" / "pisa_sr.pkl").resolve()
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert loader.fingerprint_inputs("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp32", False) != first
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert loader.fingerprint_inputs("missing.safetensors", "pisa_sr.pkl", "fp32", False)[0] is None


# ------------------------------------------------------------------ the memory manager, per host


@pytest.fixture()
def comfy_host(monkeypatch, tmp_path, models_root):  # noqa: F811
    """HOST = a ComfyHost over the stub runtime of a host; models load afresh under it."""
    def use(version):
        mm, patcher, utils, fp = runtime(version, str(tmp_path))
        for kind in ("checkpoints", "diffusers", "pisa_sr"):
            fp.add_model_folder_path(kind, str(models_root / kind))
        comfy = host_module.ComfyHost(mm, patcher, utils, fp)
        monkeypatch.setattr(host_module, "HOST", comfy)
        monkeypatch.setattr(model_module, "_loaded", weakref.WeakValueDictionary())
        return comfy, mm, patcher
    return use


@pytest.mark.parametrize("version", HOSTS)
def test_model_management_on_each_host(version, comfy_host, tmp_path):
    comfy, mm, patcher = comfy_host(version)
    comfy.register_model_folders()
    assert comfy.fp.folder_names_and_paths["pisa_sr"][1] >= {".pkl", ".safetensors"}
    model = NODES["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp32")[0]
    # Dynamic VRAM's patcher (CoreModelPatcher on newer hosts) streams comfy.ops layers only: ours is plain
    assert type(model.handle) is patcher.ModelPatcher and not model.handle.is_dynamic()
    newer = version != "0.3.64"
    free = comfy.free_memory(torch.device("cpu"), model.handle)
    assert free == mm.get_free_memory() + (1 << 20 if newer else 0)  # the patcher's own answer where it has one
    assert model.pipe.free_memory() == free
    image = torch.rand(1, 16, 16, 3)
    latent = NODES["PiSAEncode"].execute(model, image, 4.0, "bicubic", 0, 0)[0]
    NODES["PiSADecode"].execute(model, NODES["PiSADualGuidance"].execute(model, latent)[0], "adain", 0, image)
    loads = [c for c in mm.calls if c[0] == "load_models_gpu"]
    assert len(loads) == 3 and all(required > 0 and full for _, required, full in loads)
    assert [c for c in mm.calls if c[0] == "progress"][-1][1:] == (100, 100)


@pytest.mark.parametrize("version", HOSTS)
def test_cancel_inside_the_unet_pass_leaves_nothing_behind_on_each_host(version, comfy_host):
    """0.3.64's InterruptProcessingException is an Exception, newer hosts' a BaseException: either
    way it passes the OOM back-off, the adapters are restored (finally) and no ε is cached."""
    _, mm, _ = comfy_host(version)
    assert issubclass(mm.InterruptProcessingException, Exception) == (version == "0.3.64")
    model = NODES["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp32")[0]
    latent = NODES["PiSAEncode"].execute(model, torch.rand(1, 32, 32, 3), 4.0, "bicubic", 0, 0)[0]
    hook = model.pipe.unet.register_forward_pre_hook(lambda *_: mm.interrupt_current_processing(True))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            NODES["PiSADualGuidance"].execute(model, latent, 0.6, 1.4, 16, 8)
    finally:
        hook.remove()
    assert len(model.eps_cache) == 0
    out = NODES["PiSADualGuidance"].execute(model, latent, 0.6, 1.4, 16, 8)[0]["samples"]
    eps = model.pipe.predict_eps(latent["samples"], need=("pix", "pisa"), latent_tile=16, latent_overlap=8)
    expected = model.pipe.guide(latent["samples"], eps, 0.6, 1.4)
    assert torch.allclose(out, expected.cpu(), atol=1e-5)
