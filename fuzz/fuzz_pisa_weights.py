"""PiSA-SR weights as `pisa-sr info`, `--weights` and the ComfyUI loader read them: the release's
pisa_sr.pkl (torch.save zip and legacy pickle), our .safetensors and the release's tensor names in a
safetensors file; then the description `pisa-sr info` prints, and the quick recognition the nodes
run over the files of models/loras."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main
from weight_seeds import one_line

SUFFIX = ".pkl"  # the format is judged by content, never by the name
MODULES = ("pisa_core.model.checkpoint", "pisa_core.files.tensors", "pisa_core.files.torch_pickles", "pisa_core.files.kinds")


def seeds() -> dict[str, bytes]:
    from weight_seeds import pisa_files

    return pisa_files()


@one_line
def parse(path: Path) -> object:
    from pisa_core.model.checkpoint import describe, load_pisa_weights, looks_like_pisa_weights

    looks_like_pisa_weights(path)
    return describe(load_pisa_weights(path))


if __name__ == "__main__":
    main(__file__)
