"""The `accelerate launch` prefix the multi-process tests use: two CPU processes on a free port."""

from __future__ import annotations

import socket
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
