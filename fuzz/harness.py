"""The contract every fuzz target checks, and how a target runs (coverage-guided, atheris + libFuzzer).

A target is a module `fuzz/fuzz_<name>.py` that defines

    SUFFIX = ".png"                    # the file name the parser sees (parsers dispatch on it)
    def seeds() -> dict[str, bytes]    # valid files built by code: the starting corpus
    def parse(path: Path) -> object    # the public entry point a user's file reaches
    MODULES = ("pisa_core.files.images", "PIL.PngImagePlugin")  # optional: the modules parse reaches, which
                                       # are imported under instrumentation (coverage comes from them)

and ends with `if __name__ == "__main__": main(__file__)`. The contract: `parse` returns a result or
raises PiSAError; any other exception is a finding. libFuzzer enforces the time and memory bounds
(-timeout, -rss_limit_mb, set below unless given).

    python fuzz/fuzz_images.py -max_total_time=600          # a longer run, corpus in fuzz/corpus/images
    python fuzz/fuzz_images.py -runs=300 -seed=1            # what CI runs (tests/test_fuzz.py)
    python fuzz/fuzz_images.py crash-<sha1>                 # replay one finding
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The bounds of the contract: no input over 10 s, a small file never needs more than a few hundred MB
# (the libFuzzer process itself, torch and Pillow loaded, sits near 600 MB before the first input).
DEFAULTS = ("-timeout=10", "-rss_limit_mb=1500", "-max_len=65536")


def load_target(path) -> object:
    """The target module at `path` (fuzz/fuzz_<name>.py), imported by file location."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_seeds(target, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in target.seeds().items():
        (corpus / name).write_bytes(data)


def check_one(target, data: bytes, scratch: Path) -> None:
    """Hand `data` to the target's parser as a file; anything but a result or PiSAError escapes."""
    from pisa_core.errors import PiSAError

    path = scratch / ("input" + target.SUFFIX)
    path.write_bytes(data)
    try:
        target.parse(path)
    except PiSAError:
        pass


def main(target_file: str) -> None:
    """Run the target under libFuzzer; seeds are written to fuzz/corpus/<name> unless a folder is given."""
    sys.path.insert(0, str(ROOT))
    import atheris  # a test/fuzz dependency only, never imported by the pack
    import torch  # noqa: F401  (imported before instrumentation: instrumenting torch is slow and useless)
    target = load_target(target_file)
    with atheris.instrument_imports(include=["pisa_core", "PIL", "png"]):
        import pisa_core  # noqa: F401

        for module in getattr(target, "MODULES", ()):  # only what is imported here gets coverage
            importlib.import_module(module)
    name = Path(target_file).stem.removeprefix("fuzz_")
    args = [a for a in sys.argv[1:]]
    if not any(not a.startswith("-") for a in args):
        corpus = ROOT / "fuzz" / "corpus" / name
        write_seeds(target, corpus)
        args.append(str(corpus))
    args += [d for d in DEFAULTS if not any(a.startswith(d.split("=")[0] + "=") for a in args)]
    logging.disable(logging.WARNING)  # warnings (an ignored colour profile, ...) are valid results, not news
    scratch = Path(tempfile.mkdtemp(prefix=f"pisa-fuzz-{name}-"))
    os.environ.setdefault("PISA_SR_CACHE_DIR", str(scratch))
    atheris.Setup([sys.argv[0], *args], lambda data: check_one(target, data, scratch))
    atheris.Fuzz()
