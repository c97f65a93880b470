"""The SD2.1 single-file loader up to the model build: the checkpoint's keys and shapes read
(lazily), the structure checked, the three components' configs inferred and their keys renamed
(model.base.read_single_file). No model is built."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main
from weight_seeds import one_line

SUFFIX = ".ckpt"
MODULES = ("pisa_core.model.base", "pisa_core.model.ldm_convert", "pisa_core.files.tensors", "pisa_core.files.torch_pickles")


def seeds() -> dict[str, bytes]:
    from weight_seeds import sd_single_file

    return {"sd2-tiny.ckpt": sd_single_file(), "sd2-tiny-legacy.ckpt": sd_single_file(legacy=True)}


@one_line
def parse(path: Path) -> object:
    from pisa_core.model.base import read_single_file

    return read_single_file(path)


if __name__ == "__main__":
    main(__file__)
