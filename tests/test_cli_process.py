"""`pisa-sr` as a process among others: SIGTERM and SIGHUP end a run like Ctrl-C, temporary files
of killed runs are cleaned up, a closed pipe ends it quietly, `--version` answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import model_args

from pisa_core.cli.main import main
from pisa_core.cli.support import signals_interrupt
from pisa_core.files.atomic import atomic_output, temporary_path
from pisa_core.version import pyproject_version

REPOSITORY = Path(__file__).resolve().parent.parent
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and process ids")


def _photo(path: Path, w: int, h: int) -> Path:
    pixels = (np.random.default_rng(w * h).random((4, 4, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((w, h), Image.BILINEAR).save(path)
    return path


def _pisa_sr(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), *sys.path])}
    return subprocess.Popen([sys.executable, "-m", "pisa_core", *args], env=env, **popen)


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


# ----------------------------------------------------------------------------- signals


@posix_only
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_end_a_run_like_ctrl_c(model_dir, tmp_path, signum, code):
    """The signal arrives while the second image computes (sent once the first is written): the
    first stays, the second is not written, nothing temporary is left, the summary says why."""
    folder = tmp_path / "in"
    folder.mkdir()
    _photo(folder / "a.png", 12, 10)
    _photo(folder / "b.png", 192, 160)  # 768x640 output: seconds on the tiny model, the signal comes first
    out = tmp_path / "out"
    proc = _pisa_sr("upscale", str(folder), "-o", str(out), *model_args(model_dir), "--dtype", "fp32",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "[1/2] a.png ->" in line:
                proc.send_signal(signum)
                break
        stdout, rest = proc.communicate(timeout=300)
    finally:
        proc.kill()
    err = "".join(lines) + rest
    name = signal.Signals(signum).name
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"pisa-sr: interrupted ({name})", err
    assert "Traceback" not in err
    assert re.match(rf"^pisa-sr: 1 image written, [\d.]+ s per image, .*; interrupted \({name}\)$", stdout.strip())
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no b.png, no hidden .part file
    assert Image.open(out / "a.png").size == (48, 40)


@posix_only
def test_a_signal_while_a_file_is_written_removes_its_temporary_file(tmp_path):
    target = tmp_path / "image.png"
    with pytest.raises(KeyboardInterrupt) as caught, signals_interrupt(), atomic_output(target) as f:
        f.write(b"half an image")
        (temporary,) = tmp_path.iterdir()
        assert temporary.name.startswith(".image.png.") and temporary.name.endswith(".part")
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal to this process, handled on the next bytecode
        f.write(b" never reached")
    assert caught.value.signum == signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


@posix_only
def test_stale_temporary_files_of_ended_processes_are_removed(model_dir, tmp_path, capsys):
    source = _photo(tmp_path / "photo.png", 12, 10)
    out = tmp_path / "out"
    out.mkdir()
    stale = temporary_path(out / "photo.png").name.replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    (out / stale).write_bytes(b"left by a killed run")
    kept = [temporary_path(out / "other.png").name,              # this process: alive
            ".photo.png.1.deadbeef.part",                       # pid 1 (init): alive
            f".photo.png.{_dead_pid()}.dead.part",              # not the pattern: token is not 8 hex digits
            f"photo.png.{_dead_pid()}.deadbeef.part",           # not hidden
            f".photo.png.{_dead_pid()}.deadbeef.partial",       # another suffix
            "notes.part"]
    for name in kept:
        (out / name).write_bytes(b"not ours to remove")
    folder_like = out / f".x.png.{_dead_pid()}.0123abcd.part"
    folder_like.mkdir()                                         # the pattern, but a folder
    assert main(["upscale", str(source), "-o", str(out), *model_args(model_dir)]) == 0
    err = capsys.readouterr().err
    assert f"pisa-sr: removed 1 temporary file left by a run that was killed: {out / stale}" in err, err
    assert sorted(p.name for p in out.iterdir()) == sorted([*kept, folder_like.name, "photo.png"])


# ----------------------------------------------------------------------------- pipes and version


@posix_only
def test_output_to_a_closed_pipe_ends_quietly(model_dir):
    """The reader is gone before pisa-sr writes (`pisa-sr info FILE | head -1` once head quit):
    no error line, no traceback, exit code 141 (128 + SIGPIPE, what shells report)."""
    args = ["info", str(model_dir / "pisa_sr.pkl")]
    proc = _pisa_sr(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    try:
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 141, err
    finally:
        proc.kill()
    assert "error" not in err.lower() and "Traceback" not in err, err


def test_version_answers(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"pisa-sr {pyproject_version(REPOSITORY / 'pyproject.toml')}"


def test_pyproject_version_reads_the_project_table(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.other]\nversion = "9.9"\n\n[project]\nname = "x"\nversion = "1.2.3"\n\n[tool.y]\n')
    assert pyproject_version(path) == "1.2.3"
    path.write_text('[project]\nname = "x"\n\n[tool.other]\nversion = "9.9"\n')
    assert pyproject_version(path) == "unknown"
    assert pyproject_version(tmp_path / "missing.toml") == "unknown"
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyproject_version(REPOSITORY / "pyproject.toml"))
