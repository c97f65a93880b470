"""The fast decoder file (`--decoder`, pisa_core.model.fast_decoder): torch.save zips read with
weights_only=True, the layout judged from the tensor names, the structure from the shapes, the config
checked; and is_decoder_file, the cheap content check that lists model folders (it never raises).

Seeds: the published layout of the smallest decoders the reader accepts, every tensor a broadcast view
of one stored number (torch.save keeps the strides and stores one element), so a whole valid file fits
libFuzzer's -max_len.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this tree's pisa_core, not an installed one
from harness import main

# the modules parse reaches, imported under instrumentation by the harness (diffusers takes seconds)
MODULES = ("pisa_core.model.fast_decoder", "pisa_core.files.tensors", "pisa_core.files.torch_pickles")

SUFFIX = ".pth"


def _tiny_file(widths, layers_per_block: int, attention: bool, **extra) -> bytes:
    import torch
    from diffusers.models.autoencoders.vae import Decoder

    with torch.device("meta"):
        decoder = Decoder(in_channels=4, out_channels=3, up_block_types=("UpDecoderBlock2D",) * len(widths),
                          block_out_channels=widths, layers_per_block=layers_per_block,
                          mid_block_add_attention=attention)
    one = torch.ones(1)
    state = {k: one.expand(v.shape) for k, v in decoder.state_dict().items()}
    config = {"in_channels": 4, "out_channels": 3, "block_out_channels": list(widths),
              "layers_per_block": layers_per_block}
    buffer = io.BytesIO()
    torch.save({"config": config, "model_state_dict": state, **extra}, buffer)
    return buffer.getvalue()


def seeds() -> dict[str, bytes]:
    return {"one_level.pth": _tiny_file((32,), 0, True),
            "two_levels_no_attention.pth": _tiny_file((32, 32), 1, False, epoch=3)}


def parse(path: Path) -> object:
    from pisa_core.model.fast_decoder import is_decoder_file, load_decoder

    if not isinstance(is_decoder_file(path), bool):
        raise TypeError("is_decoder_file must answer True or False")
    return load_decoder(path)


if __name__ == "__main__":
    main(__file__)
