"""The Studio's side of "one GPU, one training" (train/gpu_queue.py keeps the queue, in the job store).

The Studio queues every run and resume; a background thread (and every request that changes the queue) pumps it:
the head starts when no job of the store trains, including one started from the terminal. The queue lives on disk,
so a page reload or a server restart continues it, and a terminal waiting with `run --wait` shares its order.
"""

from __future__ import annotations

import logging
import threading

from ..errors import JobError
from ..train import gpu_queue
from ..train.jobs import Job
from .config import StudioConfig
from .index import JobIndex

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: StudioConfig, index: JobIndex) -> None:
        self.config = config
        self.index = index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the queue ---------------------------------------------------------------------------------------
    def enqueue(self, job: Job, *, resume: bool, backend: str) -> None:
        gpu_queue.enqueue(job, resume=resume, backend=backend)
        self.index.invalidate()

    def withdraw(self, job: Job) -> str:
        """Take a queued job out of the queue (cancel before it started)."""
        state = gpu_queue.withdraw(job)
        self.index.invalidate()
        return state

    def order(self) -> list[str]:
        return [job.id for job, _ in gpu_queue.queue_order(self._entries())]

    def pump(self) -> str | None:
        """Start the head of the queue if the GPU is free; the id started, else None."""
        started = gpu_queue.start_head(self.config.jobs_dir, self.config.settings, entries=self._entries(),
                                       python=self.config.python)
        if started is not None:
            self.index.invalidate()
        return started

    def _entries(self) -> list[gpu_queue.Entry]:
        return [(e.job, e.info) for e in self.index.refresh()]

    # --- the background pump -----------------------------------------------------------------------------
    def start_thread(self) -> None:
        if self.config.queue_poll_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="lora-studio-queue", daemon=True)
        self._thread.start()

    def stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.config.queue_poll_s):
            try:
                self.pump()
            except (JobError, OSError) as exc:  # a damaged job folder must not stop the queue
                log.warning("queue: %s", exc)
