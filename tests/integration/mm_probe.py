"""Run by test_comfyui_host.py in a fresh interpreter: ComfyUI's own modules in-process, the pack
loaded as ComfyUI loads it, the PISA_MODEL handed to model management, unloaded, and freed.

argv: COMFYUI_DIR MODELS_ROOT PACK_ROOT ; prints one JSON line of findings.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import sys
import weakref
from pathlib import Path

comfy_dir, models_root, pack_root = (Path(a) for a in sys.argv[1:4])
sys.path.insert(0, str(comfy_dir))

import comfy.cli_args
import torch

comfy.cli_args.args.cpu = not torch.cuda.is_available()  # `--cpu` where there is no GPU

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

for kind in ("checkpoints", "diffusers"):
    folder_paths.add_model_folder_path(kind, str(models_root / kind))
folder_paths.add_model_folder_path("pisa_sr", str(models_root / "pisa_sr"))  # as extra_model_paths.yaml does

spec = importlib.util.spec_from_file_location("comfyui-pisa-sr", pack_root / "__init__.py",
                                              submodule_search_locations=[str(pack_root)])
pack = importlib.util.module_from_spec(spec)
sys.modules["comfyui-pisa-sr"] = pack
spec.loader.exec_module(pack)
host = sys.modules["comfyui-pisa-sr.nodes.host"]
extension = asyncio.run(pack.comfy_entrypoint())
nodes = {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}
asked = []  # memory_required of each load request the pack makes
_load_models_gpu = mm.load_models_gpu


def load_models_gpu_spy(models, memory_required=0, **options):
    asked.append(memory_required)
    return _load_models_gpu(models, memory_required=memory_required, **options)


mm.load_models_gpu = load_models_gpu_spy
found = {"in_comfy": host.IN_COMFY, "device": str(mm.get_torch_device()), "pisa_exts": sorted(folder_paths.folder_names_and_paths["pisa_sr"][1])}

with torch.inference_mode():  # as ComfyUI executes nodes
    model = nodes["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.pkl", "auto")[0]
    found["handle"] = type(model.handle).__name__
    found["plain_patcher"] = type(model.handle) is comfy.model_patcher.ModelPatcher and not (
        hasattr(model.handle, "is_dynamic") and model.handle.is_dynamic())  # never Dynamic VRAM's patcher
    found["patcher_counts_free_memory"] = hasattr(model.handle, "get_free_memory")
    found["same_model"] = nodes["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.pkl", "auto")[0] is model
    image = torch.rand(1, 16, 16, 3)
    latent = nodes["PiSAEncode"].execute(model, image, 4.0, "bicubic", 0, 0)[0]
    found["registered"] = any(m is model.handle for m in mm.loaded_models())
    found["weights_on_load_device"] = next(model.pipe.unet.parameters()).device == mm.get_torch_device()
    mm.unload_all_models()
    found["after_unload"] = any(m is model.handle for m in mm.loaded_models())
    found["weights_offloaded"] = next(model.pipe.unet.parameters()).device == mm.unet_offload_device()
    z_high = nodes["PiSADualGuidance"].execute(model, latent, 0.8, 1.2, 96, 32)[0]  # reloads by itself
    out = nodes["PiSADecode"].execute(model, z_high, "adain", 0, image)[0]
    found["reloaded"] = any(m is model.handle for m in mm.loaded_models())
    found["out_shape"] = list(out.shape)
    found["memory_asked_each_stage"] = len(asked) == 3 and all(a > 0 for a in asked)  # encode, guide, decode
    mm.interrupt_current_processing(True)
    try:
        nodes["PiSADualGuidance"].execute(model, latent, 0.3, 1.7, 16, 8)
        found["interrupt"] = "not raised"
    except mm.InterruptProcessingException:
        found["interrupt"] = "raised"
    found["interrupt_is_base_exception"] = not issubclass(mm.InterruptProcessingException, Exception)
    nodes["PiSADualGuidance"].execute(model, latent, 0.3, 1.7, 16, 8)

ref = weakref.ref(model)
del model, latent, z_high, out
mm.unload_all_models()
mm.cleanup_models_gc()
gc.collect()
found["freed"] = ref() is None

# --lowvram / --novram: ComfyUI's budget (0.1 byte for --novram) leaves plain torch layers on the
# offload device; the pack completes the load through the patcher. The meta device stands in for
# the GPU (a fresh fp32 model: its weights do not come back from meta).
meta = torch.device("meta")
spare = nodes["PiSALoader"].execute("[diffusers] sd21-tiny", "pisa_sr.pkl", "fp32")[0]
patcher = comfy.model_patcher.ModelPatcher(spare.container, load_device=meta, offload_device=torch.device("cpu"))
patcher.load(meta, lowvram_model_memory=0.1)
found["novram_left_weights_behind"] = not host.on_device(spare.container, meta)
host.HOST.ensure_loaded(patcher, meta)
found["novram_then_all_on_device"] = host.on_device(spare.container, meta)
found["novram_bookkeeping"] = patcher.model.model_loaded_weight_memory == patcher.model_size()
print(json.dumps(found))
