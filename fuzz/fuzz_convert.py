"""What `pisa-sr convert` reads: PiSA-SR weights in any layout or the train.pt of a resumable
training state, validated as the writers validate them (nothing is written)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main
from weight_seeds import one_line

SUFFIX = ".pt"
MODULES = ("pisa_core.model.checkpoint", "pisa_core.files.tensors", "pisa_core.files.torch_pickles")


def seeds() -> dict[str, bytes]:
    from weight_seeds import pisa_files, train_state

    official = pisa_files()
    return {"train.pt": train_state(), "train-legacy.pt": train_state(legacy=True),
            "official-zip.pkl": official["official-zip.pkl"], "official-legacy.pkl": official["official-legacy.pkl"]}


@one_line
def parse(path: Path) -> object:
    from pisa_core.model.checkpoint import load_convertible, official_pisa_dict

    return official_pisa_dict(load_convertible(path))


if __name__ == "__main__":
    main(__file__)
