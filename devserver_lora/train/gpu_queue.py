"""One GPU, one training: the queue of jobs waiting for it, kept in the job store itself.

`runner.start` refuses a job while another job of the same job store trains (GpuBusyError), under the store's GPU
lock, so the terminal and any number of Studio processes never train two jobs at once. A job that should wait is
*queued*: its job.json carries `queued_at` (and whether it resumes, with which backend); its state stays what the
training package knows ("created", or "failed"/"cancelled" for a resume), so `status` and `jobs list` still read it.
The order is `queued_at`. Whoever pumps the queue (the Studio's background thread, or a terminal waiting with
`run --wait`) starts its head when the GPU is free, so the order is one and the same for both. Nothing about the
queue lives only in memory: after a restart the next pump finds the same queue on disk.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DevserverLoraError, GpuBusyError
from . import runner
from .events import ErrorEvent, LogEvent
from .jobs import Job, JobStore
from .settings import Settings

QUEUED_AT = "queued_at"
WAITING_STATES = ("created", "failed", "cancelled")  # a resume waits as failed/cancelled

Entry = tuple[Job, dict[str, Any]]


def is_queued(info: dict[str, Any]) -> bool:
    return info.get(QUEUED_AT) is not None and info.get("state") in WAITING_STATES


def queue_order(entries: Iterable[Entry]) -> list[Entry]:
    return sorted((e for e in entries if is_queued(e[1])), key=lambda e: (e[1][QUEUED_AT], e[0].id))


def enqueue(job: Job, *, resume: bool, backend: str, num_processes: int = 1) -> None:
    job.set_state(job.state, **{QUEUED_AT: time.time()}, queue_resume=resume, queue_backend=backend,
                  queue_num_processes=num_processes, message="waiting for the GPU")
    job.append_event(LogEvent(message="queued: waiting for the GPU"))


def position(job: Job) -> int | None:
    """How many queued jobs are ahead of `job` (None when it is not queued)."""
    order = [j.id for j, _ in queue_order(JobStore(job.dir.parent).infos())]
    return order.index(job.id) if job.id in order else None


def withdraw(job: Job) -> str:
    """Take a queued job out of the queue (a cancel before it started); returns its state."""
    with runner.gpu_lock(job.dir.parent):
        info = job.info
        if not is_queued(info):
            return str(info.get("state"))
        job.set_state(info["state"], **{QUEUED_AT: None}, message="taken out of the queue")
        if info["state"] == "created":
            return runner.cancel(job)
        return job.state


def start_head(jobs_dir: Path, settings: Settings, *, entries: list[Entry] | None = None,
               python: str | None = None) -> str | None:
    """Start the head of the queue if the GPU is free; the id started, else None. `entries` (default: the store
    read now) may come from a cache, the Studio's index: runner.start checks the store itself again under the lock."""
    with runner.gpu_lock(jobs_dir):
        if entries is None:
            entries = JobStore(jobs_dir).infos()
        for job, info in entries:
            if info.get("state") == "running" and runner.reconcile(job) == "running":
                return None
        waiting = queue_order(entries)
        if not waiting:
            return None
        job, _ = waiting[0]
        return job.id if _start(job, job.info, settings, python=python) else None


def _start(job: Job, info: dict[str, Any], settings: Settings, *, python: str | None) -> bool:
    """Whether the job left the queue (started, or failed to start, which is recorded)."""
    if not is_queued(info):  # taken out of the queue or started since the cache was read
        return False
    job.set_state(info["state"], **{QUEUED_AT: None})
    try:
        runner.start(job, settings, backend=str(info.get("queue_backend") or "auto"),
                     resume=bool(info.get("queue_resume")), num_processes=int(info.get("queue_num_processes") or 1),
                     python=python)
    except GpuBusyError:  # a job the cache did not know yet runs: keep the place in the queue
        job.set_state(info["state"], **{QUEUED_AT: info[QUEUED_AT]})
        return False
    except DevserverLoraError as exc:
        job.append_event(ErrorEvent(diagnosis="not_started", message=exc.message, hint=exc.hint))
        job.set_state("failed", message=exc.message, hint=exc.hint, diagnosis="not_started")
    return True


def wait_turn(job: Job, settings: Settings, *, timeout_s: float, poll_s: float = 2.0) -> str:
    """Pump the queue until `job` has started (or left the queue, or `timeout_s` passed); returns its state.
    Jobs queued before it start first, whichever process queued them."""
    deadline = time.monotonic() + timeout_s
    while True:
        start_head(job.dir.parent, settings)
        info = job.info
        if not is_queued(info) or time.monotonic() >= deadline:
            return str(info.get("state"))
        time.sleep(poll_s)
