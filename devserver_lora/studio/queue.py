"""One GPU, one training: runs wait in a first-in-first-out queue kept in the job store itself.

A queued job is a job whose job.json carries `queued_at` (and whether it resumes, and with which backend); its
state stays what the training package knows ("created", or "failed"/"cancelled" for a resume), so the terminal's
`status` and `jobs list` still read it. The order is `queued_at`. Nothing about the queue lives only in memory:
after a page reload or a server restart the next `pump` finds the same queue on disk and continues it.

`pump` starts the head of the queue when no job runs (a job started from the terminal counts: it uses the GPU too).
It holds a file lock, so two server processes (DevServer may run several) never start two trainings at once.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from typing import Any

from ..errors import DevserverLoraError, JobError
from ..train import runner
from ..train.events import ErrorEvent, LogEvent
from ..train.jobs import Job, exclusive_lock
from .config import StudioConfig
from .index import QUEUED_AT, Entry, JobIndex, is_queued

LOCK_FILE = ".studio-queue.lock"
log = logging.getLogger(__name__)


def queue_order(entries: list[Entry]) -> list[Entry]:
    return sorted((e for e in entries if is_queued(e.info)), key=lambda e: (e.info[QUEUED_AT], e.job.id))


class Scheduler:
    def __init__(self, config: StudioConfig, index: JobIndex) -> None:
        self.config = config
        self.index = index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the queue ---------------------------------------------------------------------------------------
    def enqueue(self, job: Job, *, resume: bool, backend: str) -> None:
        job.set_state(job.state, **{QUEUED_AT: time.time()}, queue_resume=resume, queue_backend=backend,
                      message="waiting for the GPU")
        job.append_event(LogEvent(message="queued: waiting for the GPU"))
        self.index.invalidate()

    def withdraw(self, job: Job) -> str:
        """Take a queued job out of the queue (cancel before it started)."""
        with self._locked():
            info = job.info
            if not is_queued(info):
                return str(info.get("state"))
            job.set_state(info["state"], **{QUEUED_AT: None}, message="taken out of the queue")
            self.index.invalidate()
            if info["state"] == "created":
                return runner.cancel(job)
            return job.state

    def order(self) -> list[str]:
        return [e.job.id for e in queue_order(self.index.refresh())]

    def pump(self) -> str | None:
        """Start the head of the queue if the GPU is free; the id started, else None."""
        with self._locked():
            entries = self.index.refresh()
            for e in entries:
                if e.info.get("state") == "running" and runner.reconcile(e.job) == "running":
                    return None
            waiting = queue_order(entries)
            if not waiting:
                return None
            head = waiting[0]
            self._start(head.job, head.info)
            return head.job.id

    def _start(self, job: Job, info: dict[str, Any]) -> None:
        resume = bool(info.get("queue_resume"))
        backend = str(info.get("queue_backend") or "auto")
        job.set_state(info["state"], **{QUEUED_AT: None})
        self.index.invalidate()
        try:
            runner.start(job, self.config.settings, backend=backend, resume=resume, python=self.config.python)
        except DevserverLoraError as exc:
            job.append_event(ErrorEvent(diagnosis="not_started", message=exc.message, hint=exc.hint))
            job.set_state("failed", message=exc.message, hint=exc.hint, diagnosis="not_started")

    def _locked(self) -> AbstractContextManager[None]:
        return exclusive_lock(self.config.jobs_dir / LOCK_FILE)

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
