"""Unreadable files and folders for tests: permission bits do not stop root, so as root the code
runs in a process without the capabilities that bypass them (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH, dropped with setpriv), which gives the EACCES another user gets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def run_python_without_override(code: str) -> subprocess.CompletedProcess | None:
    """Run `python -c code` where permission bits apply; None when this machine cannot drop them."""
    python = [sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if os.geteuid() != 0:
        return subprocess.run(python, capture_output=True, text=True, env=env, timeout=300, check=False)
    setpriv = shutil.which("setpriv")
    caps = "-dac_override,-dac_read_search"
    if setpriv is None or subprocess.run([setpriv, f"--bounding-set={caps}", "true"], capture_output=True, check=False).returncode:
        return None
    return subprocess.run([setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *python],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
