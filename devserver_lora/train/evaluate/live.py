"""Keep a running job's loss plot current: a background thread redraws `loss_plot.png` when new events arrived
(at most every `interval_s` seconds), and `finish` writes the plot and the report once the run has ended.

Used by the training worker (`runner.run_worker`) for every backend. Drawing never disturbs training: a failure
is logged once as a warning event and the plot simply stops updating.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..events import LogEvent

if TYPE_CHECKING:
    from ..jobs import Job

DEFAULT_INTERVAL_S = 10.0


class LivePlot:
    def __init__(self, job: Job, *, interval_s: float | None = None) -> None:
        self.job = job
        self.interval_s = DEFAULT_INTERVAL_S if interval_s is None else interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = -1
        self._failed = False

    def __enter__(self) -> LivePlot:
        self._thread = threading.Thread(target=self._loop, name="loss-plot", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _events_size(self) -> int:
        try:
            return (Path(self.job.dir) / "events.jsonl").stat().st_size
        except OSError:
            return -1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            size = self._events_size()
            if size == self._seen or self._failed:
                continue
            self._seen = size
            try:
                from .lossplot import write_loss_plot

                write_loss_plot(self.job)
            except Exception as exc:  # noqa: BLE001 - the plot is a view; training goes on without it
                self._failed = True
                self.job.append_event(LogEvent(level="warning", message=f"the loss plot could not be drawn: {exc}"))


def finish(job: Job, *, state: str | None = None, message: str | None = None, written_by: str = "run"
           ) -> Path | None:
    """The final plot and report of a run (`state`: the outcome about to be recorded), or after `install`; a warning
    event, not an exception, when they cannot be written."""
    try:
        from .report import write_report

        return write_report(job, written_by=written_by, state=state, message=message)
    except Exception as exc:  # noqa: BLE001 - the run's outcome is recorded already; the report must not undo it
        job.append_event(LogEvent(level="warning", message=f"the report could not be written: {exc}"))
        return None
