"""The one stand-in for ComfyUI in the CPU tests, and only for what a real ComfyUI run exercises.

- `install_v3_api(host)`: where the real `comfy_api` is not importable, a minimal `comfy_api.latest`
  (`io.ComfyNode`, `io.Schema`, the input/output types the nodes use, `io.NodeOutput`,
  `ComfyExtension`). Its keywords are those of the named host: on "0.3.64" `Schema(search_aliases=)`
  and inputs' `advanced=` raise TypeError as there; "0.33" has both. `GET_NODE_INFO_V1` builds the
  V1 info (inputs by section and order, outputs) as ComfyUI's `Schema.get_v1_info` does.
- `runtime(host)`: comfy.model_management, comfy.model_patcher, comfy.utils and folder_paths with
  the signatures of that host, recording the calls the pack makes (for `ComfyHost`).
The integration tests (tests/integration) run the same nodes on real ComfyUI 0.3.64 and 0.33.0.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from abc import ABC, abstractmethod
from enum import Enum

HOSTS = ("0.3.64", "0.33")


def _v3_api(host: str) -> types.ModuleType:
    newer = host != "0.3.64"

    class Input:
        io_type = None

        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                     max=None, step=None, display_mode=None, options=None, multiline=None):
            self.id, self.optional = id, optional
            settings = {"display_name": display_name, "tooltip": tooltip, "lazy": lazy, "default": default,
                        "min": min, "max": max, "step": step, "display": display_mode, "options": options,
                        "multiline": multiline}
            self.settings = {k: v for k, v in settings.items() if v is not None}

    if newer:
        class Input(Input):  # the newer host's inputs: one more keyword
            def __init__(self, id, *args, advanced=None, **kwargs):
                super().__init__(id, *args, **kwargs)
                if advanced is not None:
                    self.settings["advanced"] = advanced

    class Output:
        io_type = None

        def __init__(self, id=None, display_name=None, tooltip=None):
            self.display_name, self.tooltip = display_name, tooltip

    def comfy_type(io_type: str):
        return type(io_type, (), {"Input": type("Input", (Input,), {"io_type": io_type}),
                                  "Output": type("Output", (Output,), {"io_type": io_type})})

    def schema(node_id, display_name=None, category="sd", inputs=None, outputs=None, description=""):
        return types.SimpleNamespace(node_id=node_id, display_name=display_name, category=category,
                                     inputs=inputs or [], outputs=outputs or [], description=description)

    def newer_schema(*args, search_aliases=None, **kwargs):
        return types.SimpleNamespace(**vars(schema(*args, **kwargs)), search_aliases=search_aliases)

    class ComfyNode:
        @classmethod
        @abstractmethod
        def define_schema(cls): ...

        @classmethod
        @abstractmethod
        def execute(cls, **kwargs): ...

        @classmethod
        def GET_NODE_INFO_V1(cls) -> dict:  # ComfyUI's name
            s = cls.define_schema()
            inputs: dict = {"required": {}}
            for i in s.inputs:
                inputs.setdefault("optional" if i.optional else "required", {})[i.id] = (i.io_type, dict(i.settings))
            return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
                    "output": [o.io_type for o in s.outputs],
                    "output_name": [o.display_name or o.io_type for o in s.outputs],
                    "output_tooltips": [o.tooltip for o in s.outputs], "name": s.node_id,
                    "display_name": s.display_name, "description": s.description, "category": s.category,
                    "search_aliases": getattr(s, "search_aliases", None)}

    class NodeOutput:
        def __init__(self, *args):
            self.args = args

        def __getitem__(self, index):
            return self.args[index]

    io = types.ModuleType("comfy_api.latest.io")
    io.ComfyNode, io.Schema, io.NodeOutput = ComfyNode, newer_schema if newer else schema, NodeOutput
    io.NumberDisplay = Enum("NumberDisplay", {"number": "number", "slider": "slider"}, type=str)
    io.Custom = comfy_type
    for name, io_type in (("Int", "INT"), ("Float", "FLOAT"), ("String", "STRING"), ("Boolean", "BOOLEAN"),
                          ("Combo", "COMBO"), ("Image", "IMAGE"), ("Mask", "MASK"), ("Latent", "LATENT")):
        setattr(io, name, comfy_type(io_type))

    class ComfyExtension(ABC):
        async def on_load(self) -> None:
            return None

        @abstractmethod
        async def get_node_list(self) -> list: ...

    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ComfyExtension = io, ComfyExtension
    return latest


def install_v3_api(host: str = "0.33") -> bool:
    """Put the stub `comfy_api.latest` in sys.modules (replacing an earlier stub) unless the real
    one is importable; True when the stub is in use."""
    current = sys.modules.get("comfy_api")
    if current is None and importlib.util.find_spec("comfy_api") is not None:
        return False
    if current is not None and not getattr(current, "pisa_stub", False):
        return False
    package = types.ModuleType("comfy_api")
    package.pisa_stub, package.latest = True, _v3_api(host)
    sys.modules["comfy_api"], sys.modules["comfy_api.latest"] = package, package.latest
    return True


def uninstall_v3_api() -> None:
    """Take the stub out of sys.modules (a pack imported without it sees no V3 API)."""
    if getattr(sys.modules.get("comfy_api"), "pisa_stub", False):
        del sys.modules["comfy_api"], sys.modules["comfy_api.latest"]


# ------------------------------------------------------------------ runtime modules (ComfyHost)


def runtime(host: str, models_dir: str, device: str = "cpu", free_bytes: int = 1 << 30):
    """(mm, patcher, utils, fp) of `host` ("0.3.64" or "0.33"); `mm.calls` records the pack's calls."""
    import torch

    newer = host != "0.3.64"
    calls: list[tuple] = []
    mm = types.SimpleNamespace(calls=calls, interrupted=False)
    # ComfyUI 0.20 made it a BaseException, so `except Exception` no longer swallows Cancel.
    mm.InterruptProcessingException = type("InterruptProcessingException", (BaseException if newer else Exception,), {})
    mm.get_torch_device = lambda: torch.device(device)
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.get_free_memory = lambda dev=None, torch_free_too=False: free_bytes

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        calls.append(("load_models_gpu", memory_required, force_full_load))

    def interrupt_current_processing(value=True):
        mm.interrupted = value

    def throw_exception_if_processing_interrupted():
        if mm.interrupted:
            mm.interrupted = False
            raise mm.InterruptProcessingException()

    mm.load_models_gpu, mm.interrupt_current_processing = load_models_gpu, interrupt_current_processing
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.soft_empty_cache = lambda force=False: calls.append(("soft_empty_cache",))

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size

        def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
            calls.append(("patch_model", str(device_to)))

        def is_dynamic(self):
            return False

    if newer:  # 0.12+: counts what the dynamic manager could evict
        ModelPatcher.get_free_memory = lambda self, device: free_bytes + (1 << 20)

    class ModelPatcherDynamic(ModelPatcher):
        def is_dynamic(self):
            return True

    patcher = types.SimpleNamespace(ModelPatcher=ModelPatcher)
    patcher.CoreModelPatcher = ModelPatcherDynamic if newer else ModelPatcher  # Dynamic VRAM on a GPU

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls.append(("progress", value, total))

    utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    fp = types.SimpleNamespace(models_dir=models_dir, folder_names_and_paths={})

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        paths, _ = fp.folder_names_and_paths.setdefault(folder_name, ([], set()))
        if full_folder_path not in paths:
            paths.append(full_folder_path)

    def get_filename_list(folder_name):
        paths, exts = fp.folder_names_and_paths[folder_name]
        return sorted(os.path.relpath(os.path.join(d, f), p) for p in paths for d, _, files in os.walk(p)
                      for f in files if not exts or os.path.splitext(f)[1].lower() in exts)

    fp.add_model_folder_path, fp.get_filename_list = add_model_folder_path, get_filename_list
    fp.get_folder_paths = lambda folder_name: list(fp.folder_names_and_paths[folder_name][0])
    return mm, patcher, utils, fp
