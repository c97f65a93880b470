"""Progress over several stages: each stage reports its tiles as (done, total), the whole run
reports one monotone count to a callback (a ComfyUI progress bar, a log line, a test)."""

from __future__ import annotations

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
