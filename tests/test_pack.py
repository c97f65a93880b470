"""The Registry-ready archive: comfy-cli packs the committed tree into runtime files only
(tools/check_pack.py, .comfyignore), reads the metadata the Registry shows (operating systems,
accelerators, URLs, icon), and the icon is a small square PNG. The comfy-cli parts run where
comfy-cli is installed (.ci/run installs it)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_pack  # noqa: E402
import make_icon  # noqa: E402


def test_the_allow_list_refuses_development_files_and_wants_the_runtime():
    runtime = [*check_pack.REQUIRED, "nodes/stages.py", "pisa_core/cli/train.py", "example_workflows/a.json",
               "example_workflows/a.jpg", "README.md"]
    assert check_pack.problems(runtime) == []
    found = check_pack.problems([*runtime, "tests/test_cli.py", "benchmarks/speed.py", ".ci/run", "docs/x.png",
                                 "tools/check_pack.py", ".gitignore"])
    assert len(found) == 6 and all(line.startswith("not a runtime file: ") for line in found)
    assert check_pack.problems([n for n in runtime if n != "pisa_core/configs/unet.json"]) == \
        ["missing: pisa_core/configs/unet.json"]


@pytest.mark.skipif(shutil.which("comfy") is None or shutil.which("git") is None
                    or not (ROOT / ".git").exists(), reason="needs comfy-cli (pip install comfy-cli) and a git checkout")
def test_comfy_node_pack_of_the_committed_tree_holds_only_runtime_files():
    assert check_pack.main([]) == 0


def test_the_registry_reads_our_platforms_urls_and_icon():
    config_parser = pytest.importorskip("comfy_cli.registry.config_parser", reason="needs comfy-cli")
    config = config_parser.extract_node_configuration(str(ROOT / "pyproject.toml"))
    project = config.project
    assert project.supported_os == ["OS Independent"]
    # comfy-cli drops every accelerator when one of them is not a Registry name
    assert sorted(project.supported_accelerators) == ["GPU :: AMD ROCm", "GPU :: Apple Metal", "GPU :: NVIDIA CUDA"]
    assert project.urls.documentation.endswith("/docs") and project.urls.issues.endswith("/issues")
    assert config.tool_comfy.icon.endswith("/icon.png") and (ROOT / "icon.png").is_file()
    minimum = project.supported_comfyui_version
    assert minimum == ">=0.3.64", minimum  # the pack's entry names the same version to a user of an older host
    assert f"update ComfyUI to {minimum.removeprefix('>=')} or newer" in (ROOT / "__init__.py").read_text()


def test_the_icon_is_a_small_square_png_drawn_by_its_script():
    with Image.open(ROOT / "icon.png") as icon:
        assert icon.format == "PNG" and icon.size == (400, 400)
    assert (ROOT / "icon.png").stat().st_size < 20_000
    assert make_icon.draw().size == (400, 400)
