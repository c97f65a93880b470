"""pisa_core's layers hold: imports only go down, and no modules import each other in a circle.

    shared (errors, version, options)  <  files  <  model  <  inference  <  train  <  cli

`cli` may use `train`, `train` never `cli`. The package's face (`pisa_core/__init__.py`) and every
`__main__` (an entry point that nothing imports) may use every layer. Every import counts: at module
level or inside a function, relative or absolute. The public names of `pisa_core` stay importable.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pisa_core"
SHARED = ("errors", "version", "options")
ORDER = ("shared", "files", "model", "inference", "train", "cli", "entry")
# The names `from pisa_core import ...` gives: the public API, which a release never removes.
PUBLIC = {"PiSAError", "__version__", "PiSAPipeline", "load_base_model", "load_pisa_weights", "save_pisa_weights",
          "save_official_pkl", "dual_guidance", "plan_passes", "read_image", "read_mask", "read_png_settings",
          "write_image"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[-1] == "__main__":
        return "entry"
    if parts[1] in SHARED:
        return "shared"
    if parts[1] in ORDER:
        return parts[1]
    raise AssertionError(f"{module} lies outside the layers: move it into one of {', '.join(ORDER[1:-1])}")


def imports(module: str) -> list[tuple[int, str]]:
    """(line, imported pisa_core module) for every import statement of `module`, at any depth.
    `from X import a` imports module X.a where that is a module, else X itself."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                found.append((node.lineno, f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source))
    return [(line, name) for line, name in found if name == "pisa_core" or name.startswith("pisa_core.")]


def graph() -> dict[str, list[tuple[int, str]]]:
    return {module: imports(module) for module in MODULES}


def test_the_top_level_holds_only_the_face_the_entry_and_what_every_layer_shares():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert top == sorted(["__init__.py", "__main__.py", *(f"{name}.py" for name in SHARED)])
    layers = sorted(path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file())
    assert layers == sorted(ORDER[1:-1])


def test_imports_only_go_down():
    wrong = []
    for module, found in graph().items():
        for line, target in found:
            if target not in MODULES:
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}, which does not exist")
                continue
            here, there = layer(module), layer(target)
            if here != there and (here == "shared" or ORDER.index(there) > ORDER.index(here) or there == "entry"):
                wrong.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}: {here} -> {there} "
                             f"goes up (order: {' < '.join(ORDER[:-1])})")
    assert not wrong, "\n".join(wrong)


def test_no_modules_import_each_other_in_a_circle():
    edges = graph()
    state: dict[str, str] = {}
    stack: list[tuple[str, int]] = []
    circles = []

    def visit(module: str) -> None:
        state[module] = "open"
        for line, target in edges.get(module, ()):
            stack.append((module, line))
            if state.get(target) == "open":
                start = next(i for i, (m, _) in enumerate(stack) if m == target)
                circles.append(" -> ".join(f"{MODULES[m].relative_to(ROOT)}:{n}" for m, n in stack[start:])
                               + f" -> {target}")
            elif target in edges and target not in state:
                visit(target)
            stack.pop()
        state[module] = "done"

    for module in edges:
        if module not in state:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checks_see_imports_inside_functions_and_relative_ones():
    """The checks read what they must: a function-level relative import and an absolute one."""
    found = dict((target, line) for line, target in imports("pisa_core.cli.main"))
    assert "pisa_core.inference.pipeline" in found  # `from ..inference.pipeline import PiSAPipeline` in a function
    assert layer("pisa_core.cli.main") == "cli" and layer("pisa_core.files.images.reading") == "files"
    assert layer("pisa_core.train.__main__") == "entry" and layer("pisa_core.options") == "shared"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_imports_from_the_package(name):
    pisa_core = importlib.import_module("pisa_core")
    assert set(pisa_core.__all__) == PUBLIC
    assert getattr(pisa_core, name) is not None
