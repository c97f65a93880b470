"""`pisa-sr` and `python -m pisa_core`: the process settings that must come before `import torch`,
then the command line (cli.main).

Huge pages for large CPU tensors: PyTorch (2.2 and later, on Linux) backs CPU tensors of 2 MiB
and more with transparent huge pages when THP_MEM_ALLOC_ENABLE=1 is in the environment before
torch is imported; it reads the variable once, at its first allocation. Otherwise the kernel maps
every fresh large tensor in 4 KiB pages at first touch, and the VAE's full-resolution activations
are fresh at every image (docs/performance.md, "Memory allocator and huge pages": about 1 M page
faults and 2.5 s of system time per 512² image on a 2-core machine, down to 45 k and 0.9 s, the image about
10 % faster). The command sets it unless the environment already says either way; the Python API
and ComfyUI leave the process they run in as they find it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def prepare_process(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set the variables this command wants that the user has not set; returns their names.
    Nothing once torch is imported (too late to matter) and nothing off Linux."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or not sys.platform.startswith("linux") or HUGE_PAGES in environ:
        return []
    environ[HUGE_PAGES] = "1"
    return [HUGE_PAGES]


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    from .cli.main import main as cli_main  # imports torch

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
