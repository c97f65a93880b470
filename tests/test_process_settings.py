"""The `pisa-sr` command's process settings (pisa_core/__main__.py): huge pages for large CPU
tensors, set before torch is imported, never over the user's own choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pisa_core.__main__ import HUGE_PAGES, prepare_process

ROOT = Path(__file__).resolve().parents[1]
PAGES_4K = 256 * 2**20 // 4096

# a fresh interpreter: the command's settings, then torch, then the page faults of touching 256 MiB
CHILD = """
import json
import os
import resource
import sys
from pisa_core.__main__ import HUGE_PAGES, prepare_process
was_imported = "torch" in sys.modules
set_names = prepare_process()
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(256 * 2**20, dtype=torch.uint8).fill_(1)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"was_imported": was_imported, "set": set_names, "value": os.environ.get(HUGE_PAGES), "faults": faults}))
"""


def _child(**env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != HUGE_PAGES}
    done = subprocess.run([sys.executable, "-c", CHILD], env={**environ, **env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _thp_mode() -> str | None:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are a Linux setting")
def test_the_command_turns_huge_pages_on_before_torch_and_keeps_the_users_choice():
    on = _child()
    assert on["set"] == [HUGE_PAGES] and on["value"] == "1" and not on["was_imported"]
    off = _child(**{HUGE_PAGES: "0"})
    assert off["set"] == [] and off["value"] == "0"
    if _thp_mode() not in ("madvise", "always") or torch.__version__ < (2, 2):
        pytest.skip(f"no transparent huge pages to measure (kernel mode {_thp_mode()}, torch {torch.__version__})")
    # 2 MiB pages: a few hundred faults for 256 MiB instead of one per 4 KiB page
    assert on["faults"] < PAGES_4K // 4, on
    if _thp_mode() == "madvise":
        assert off["faults"] > PAGES_4K // 2, off


def test_nothing_is_set_once_torch_is_imported_or_off_linux(monkeypatch):
    environ: dict[str, str] = {}
    assert "torch" in sys.modules  # this test process
    assert prepare_process(environ) == [] and environ == {}
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert prepare_process(environ) == [] and environ == {}
    monkeypatch.setattr(sys, "platform", "linux")
    assert prepare_process(environ) == [HUGE_PAGES] and environ == {HUGE_PAGES: "1"}
