"""A really read-only folder for tests: permission bits do not stop root, so as root a read-only
tmpfs is mounted over the folder in a private mount namespace (`unshare -m`), which gives the same
EROFS a read-only disk gives; other users get the folder's write bits removed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys


def run_python_with_read_only(folder, code: str) -> subprocess.CompletedProcess | None:
    """Run `python -c code` while `folder` is read-only; None when this machine cannot make it so."""
    folder.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(python, capture_output=True, text=True, env=env, timeout=600)
        finally:
            folder.chmod(0o755)
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-m", "true"], capture_output=True).returncode:
        return None
    script = f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(folder))} && exec {shlex.join(python)}"
    return subprocess.run([unshare, "-m", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=600)
