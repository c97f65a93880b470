"""Progress over several stages: each stage reports its tiles as (done, total), the whole run
reports one monotone count to a callback (a ComfyUI progress bar, a log line, a test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Report = Callable[[int, int], None]
STAGE_STEPS = 100  # steps per image and stage; tiles report fractions of it


class Progress:
    """`stage(share)` gives the (done, total) callback of one stage worth `share` steps of the
    run's `total`; `advance(n)` counts steps that needed no work. Every update calls `report`."""

    def __init__(self, total_steps: int, report: Report | None = None):
        self.total = max(1, int(total_steps))
        self.done = 0
        self.report = report

    def _set(self, value: int) -> None:
        self.done = min(max(value, self.done), self.total)
        if self.report is not None:
            self.report(self.done, self.total)

    def stage(self, share: int = STAGE_STEPS) -> Report:
        start = self.done

        def progress(done: int, total: int) -> None:
            fraction = done / total if total else 1.0
            self._set(start + round(fraction * share))

        return progress

    def advance(self, steps: int = STAGE_STEPS) -> None:
        self._set(self.done + steps)


class Heartbeat:
    """`beat(elapsed_seconds)` every `interval` seconds on a timer thread while the `with` block
    runs, for stages that report nothing for a long time (one huge tile, loading a model). Leaving
    the block stops the thread and waits for it: no beat runs after the block, none is left half
    done (a beat and the stop take the same lock)."""

    def __init__(self, interval: float, beat: Callable[[float], None]):
        self.interval, self.beat = interval, beat
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pisa-sr heartbeat", daemon=True)
        self._start = 0.0

    def __enter__(self):
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._stop.is_set():
                    return
                self.beat(time.perf_counter() - self._start)
