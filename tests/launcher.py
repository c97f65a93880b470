"""The `accelerate launch` prefix the multi-process tests use: two CPU processes on a free port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile

import psutil


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_two_processes() -> list[str]:
    # `--cpu` starts ONE process without an MPI hostfile; `--multi_gpu` uses accelerate's torchrun
    # launcher, which runs gloo DDP on a machine without GPUs. A fresh port per run: a previous
    # run's port may still be in TIME_WAIT, and torchrun then waits for its rendezvous.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]


def _kill_tree(pid: int) -> None:
    """Kill a launcher and every worker it started: torchrun puts each worker in a session of its
    own, so killing the launcher's process group alone would leave them running."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=30)


def run_launched(cmd: list[str], env: dict, timeout: float = 150, tries: int = 2) -> subprocess.CompletedProcess:
    """Run an `accelerate launch` command; a run that outlives `timeout` is killed whole (launcher
    and workers) and started once more on a fresh port, so a stall never outlives the test. Output
    goes to files, not pipes: a pipe held open by a stray worker would block the reader."""
    for attempt in range(tries):
        if attempt:
            port = cmd.index("--main_process_port") + 1
            cmd = [*cmd[:port], str(free_port()), *cmd[port + 1:]]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                continue
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    raise AssertionError(f"accelerate launch stalled {tries} times (over {timeout} s each): {' '.join(cmd)}")
