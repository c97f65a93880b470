"""The one reader of tensor files (pisa_core/files/tensors.py): safetensors headers and data, torch
pickles (zip and legacy) through the weights-only loader, eagerly and lazily."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main
from weight_seeds import one_line

SUFFIX = ".safetensors"
MODULES = ("pisa_core.files.tensors", "pisa_core.files.torch_pickles", "pisa_core.files.kinds")


def seeds() -> dict[str, bytes]:
    from weight_seeds import tensor_files

    return tensor_files()


@one_line
def parse(path: Path) -> object:
    from pisa_core.files.tensors import LazyTensor, read_tensors

    for tensor in read_tensors(path, "a tensor file", lazy=True).values():
        if isinstance(tensor, LazyTensor):
            tensor.load()
    return read_tensors(path, "a tensor file")


if __name__ == "__main__":
    main(__file__)
