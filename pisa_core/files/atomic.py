"""Files that appear whole or not at all: every file the project writes (images, weights,
captions, training states, the prompt cache) goes through `atomic_output`."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from ..errors import PiSAError

TOKEN_BYTES = 4
# temporary_path's names: .NAME.PID.TOKEN.part (the token TOKEN_BYTES random bytes in hex)
TEMPORARY_NAME = re.compile(rf"^\..+\.(?P<pid>[1-9][0-9]*)\.[0-9a-f]{{{2 * TOKEN_BYTES}}}\.part$")


def temporary_path(path: Path) -> Path:
    """A hidden name beside `path` (same filesystem, so the final rename is atomic); input listings
    skip hidden files, so a leftover from a killed process is never taken as an input."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(TOKEN_BYTES)}.part")


def _process_gone(pid: int) -> bool:
    """True only when no process has this id (a live one of another user counts as alive)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # another user's process, or no id a process could have
        return False
    return False


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary files of this naming pattern (TEMPORARY_NAME) in `folder` whose
    process is gone (killed before it could clean up); returns them. Nothing else is touched:
    not other names, not links or folders, not the files of a live process. POSIX only (elsewhere
    a process cannot be probed without side effects): returns [] there."""
    if os.name != "posix":
        return []
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or not _process_gone(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = True):
    """A binary file object whose bytes become `path` only when the block completes: written to a
    temporary file in the same folder, flushed to disk and renamed over `path`. On any error or
    interrupt (Ctrl-C, a full disk) the temporary file is removed and `path` is left as it was.
    overwrite=False: an existing `path` is an error, checked again just before the rename.
    OSError becomes a one-line PiSAError naming the file."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with open(temporary, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and path.exists():
            raise PiSAError(f"Not writing {str(path)!r}: the file exists (overwriting was not asked for).")
        os.replace(temporary, path)
    except OSError as exc:
        _discard(temporary)
        raise PiSAError(f"Cannot write {str(path)!r}: {exc.strerror or exc}.") from exc
    except BaseException:
        _discard(temporary)
        raise


def _discard(temporary: Path) -> None:
    """Remove a temporary file if there is one; on a read-only or vanished folder there is not."""
    with contextlib.suppress(OSError):
        temporary.unlink(missing_ok=True)
