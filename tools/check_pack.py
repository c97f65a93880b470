"""The archive the Comfy Registry and ComfyUI-Manager install holds only what ComfyUI needs to run
the pack and the CLI: packs the committed tree with comfy-cli (`comfy node validate`, then
`comfy node pack`, which honours .comfyignore) in a temporary clone, lists the archive and fails
on any file outside the allow-list below, or when a runtime file is missing.

    pip install comfy-cli && python tools/check_pack.py [--archive node.zip]

--archive checks an existing archive instead of packing. A development tool (.ci/run runs it);
not part of the packed node.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the packed node may hold ("*" crosses folders): the ComfyUI entry point and nodes, the core
# with its model configurations, the templates with their thumbnails, the metadata, the icon.
ALLOWED = ("__init__.py", "nodes/*.py", "pisa_core/*.py", "pisa_core/configs/*.json", "example_workflows/*.json",
           "example_workflows/*.jpg", "pyproject.toml", "requirements.txt", "README.md", "LICENSE", "icon.png")
# ...and what it must hold to run.
REQUIRED = ("__init__.py", "nodes/__init__.py", "pisa_core/__init__.py", "pisa_core/__main__.py",
            "pisa_core/configs/unet.json", "pyproject.toml", "requirements.txt", "icon.png")


def problems(names: list[str]) -> list[str]:
    """One line per file outside the allow-list and per missing runtime file."""
    found = [f"not a runtime file: {n}" for n in names if not any(fnmatch.fnmatchcase(n, p) for p in ALLOWED)]
    found += [f"missing: {n}" for n in REQUIRED if n not in names]
    if not any(fnmatch.fnmatchcase(n, "example_workflows/*.json") for n in names):
        found.append("missing: example_workflows/*.json (the templates)")
    return found


def comfy(*args: str, cwd: Path) -> None:
    """`comfy --skip-prompt node ARGS` without a terminal; fails loudly."""
    exe = shutil.which("comfy")
    if exe is None:
        raise SystemExit("comfy-cli is not installed: pip install comfy-cli")
    done = subprocess.run([exe, "--skip-prompt", "--no-json", "node", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    print(done.stdout.strip())
    if done.returncode != 0:
        raise SystemExit(f"comfy node {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def pack(work: Path) -> Path:
    """The committed tree, cloned into `work`, validated and packed; the archive's path."""
    clone = work / "pack"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    comfy("validate", cwd=clone)
    comfy("pack", cwd=clone)
    return clone / "node.zip"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="check this archive instead of packing the committed tree")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pisa-sr-pack-") as tmp:
        archive = args.archive or pack(Path(tmp))
        with zipfile.ZipFile(archive) as z:
            names = sorted(z.namelist())
    found = problems(names)
    for line in found:
        print(line, file=sys.stderr)
    print(f"{archive.name}: {len(names)} files, {'not ' if found else ''}only runtime files")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
