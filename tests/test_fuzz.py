"""Every fuzz target under fuzz/ runs briefly and deterministically (a fixed seed and number of runs)
from its code-built seeds: a finding fails the test with libFuzzer's report. Longer runs: fuzz/harness.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = sorted((ROOT / "fuzz").glob("fuzz_*.py"))
RUNS = 300

pytest.importorskip("atheris", reason="the fuzz targets need atheris (pip install -e '.[test]')")


@pytest.fixture(autouse=True)
def _environment_kept():
    """A target sets its environment when it is loaded (fuzz_images.py: a 1 MP pixel limit for the
    fuzzer's runs); loading it here must not change what the tests after these see."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("target", TARGETS, ids=[t.stem for t in TARGETS])
def test_target_holds_its_contract(target, tmp_path):
    corpus = tmp_path / "corpus"
    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        from harness import load_target, write_seeds
    finally:
        sys.path.pop(0)
    write_seeds(load_target(target), corpus)
    command = [sys.executable, str(target), f"-runs={RUNS}", "-seed=1", f"-artifact_prefix={tmp_path}/", str(corpus)]
    if sys.platform.startswith("linux"):
        # libFuzzer's -rss_limit_mb reads the peak RSS, which Linux carries over from this (large) pytest
        # process into a child it starts; a small shell starting the target gives it its own peak.
        command = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *command]
    result = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{target.name} found an input that breaks its contract:\n{result.stderr[-4000:]}"


def test_every_seed_is_a_valid_file(tmp_path):
    """The seeds parse without a PiSAError, so every target's corpus starts inside its parser."""
    sys.path.insert(0, str(ROOT / "fuzz"))
    try:
        from harness import load_target
    finally:
        sys.path.pop(0)
    for path in TARGETS:
        target = load_target(path)
        for name, data in target.seeds().items():
            file = tmp_path / (path.stem + "-" + name + target.SUFFIX)
            file.write_bytes(data)
            target.parse(file)
