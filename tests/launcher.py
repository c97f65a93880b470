"""The `accelerate launch` prefix the multi-process tests use: two CPU processes on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


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


def run_launched(cmd: list[str], env: dict, timeout: float = 150, tries: int = 2) -> subprocess.CompletedProcess:
    """Run an `accelerate launch` command in its own process group. On a loaded two-core machine
    gloo's rendezvous or teardown occasionally stalls; such a run is killed whole (launcher and
    workers) and started once more on a fresh port, so a stall never outlives the test."""
    for attempt in range(tries):
        if attempt:
            port = cmd.index("--main_process_port") + 1
            cmd = [*cmd[:port], str(free_port()), *cmd[port + 1:]]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    raise AssertionError(f"accelerate launch stalled {tries} times (over {timeout} s each): {' '.join(cmd)}")
