"""V3 schema pieces shared by the node classes: inputs built from pisa_core's options, the
PISA_MODEL type, and the schema keywords that only newer hosts know.

ComfyUI 0.3.64's `io.Schema` is a dataclass and its inputs take fixed keywords: an unknown keyword
(`search_aliases`, `advanced`) raises TypeError there, and one node's schema error fails the whole
pack. So those keywords are passed only where the host's signatures name them.
"""

from __future__ import annotations

import inspect

from comfy_api.latest import io

from ..pisa_core import options

CATEGORY = "image/upscaling/PiSA-SR"
SEARCH_ALIASES = ["upscale", "super-resolution", "super resolution", "PiSA-SR"]

PisaModel = io.Custom("PISA_MODEL")  # the loaded pipeline (nodes/model.py, PiSAModel)


def _accepts(function, keyword: str) -> bool:
    return keyword in inspect.signature(function).parameters


HAS_SEARCH_ALIASES = _accepts(io.Schema, "search_aliases")
HAS_ADVANCED = _accepts(io.Int.Input, "advanced")  # folded-away inputs, shared by every input class


def node_schema(node_id: str, display_name: str, description: str, inputs: list, outputs: list) -> io.Schema:
    """io.Schema in the pack's category, with search aliases where the host has them."""
    extra = {"search_aliases": list(SEARCH_ALIASES)} if HAS_SEARCH_ALIASES else {}
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                     inputs=inputs, outputs=outputs, **extra)


def _advanced(advanced: bool) -> dict:
    return {"advanced": True} if advanced and HAS_ADVANCED else {}


def option_input(name: str, *, advanced: bool = False, optional: bool = False, tooltip: str | None = None):
    """The V3 input of a pisa_core option: its node name, default, range, choices and help."""
    option = options.OPTIONS[name]
    common = dict(optional=optional, tooltip=tooltip or option.help, default=option.default, **_advanced(advanced))
    node_name = option.node_name or option.name
    if option.choices:
        return io.Combo.Input(node_name, options=list(option.choices), **common)
    if option.kind is bool:
        return io.Boolean.Input(node_name, **common)
    if option.kind is str:
        return io.String.Input(node_name, **common)
    number = io.Int if option.kind is int else io.Float
    display = {"display_mode": io.NumberDisplay.slider} if option.slider else {}
    return number.Input(node_name, min=option.min, max=option.max, step=option.step, **display, **common)


def widget(kind, name: str, *, advanced: bool = False, optional: bool = False, **settings):
    """A widget input that is not a pisa_core option (e.g. the grid's value lists)."""
    return kind.Input(name, optional=optional, **settings, **_advanced(advanced))


def model_input():
    return PisaModel.Input("pisa_model", tooltip="The PiSA-SR model from a PiSA-SR Loader node.")


def image_input():
    return io.Image.Input("image", tooltip="The low-quality image(s) to super-resolve.")


def color_reference_input():
    return io.Image.Input("color_reference", optional=True, tooltip=(
        "Optional colour reference (usually the low-quality input image). Without it, the image given to PiSA "
        "Encode is used."))


def region_inputs() -> list:
    """Region-aware guidance: optional inputs appended last (saved workflows and API prompts stay valid)."""
    return [
        io.Mask.Input("mask", optional=True, tooltip=(
            "Optional region (drawn on the low-quality image, any size; 1 inside): there the masked λ apply, "
            "elsewhere the node's λ, blended for soft masks. One mask, or one per image of the batch. Changing "
            "it runs no UNet pass.")),
        option_input("lambda_pix_masked", optional=True),
        option_input("lambda_sem_masked", optional=True),
    ]
