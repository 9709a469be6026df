"""What the jobs list shows, kept per process and refreshed from the job store (which stays the truth).

Listing reads job.json of every job; with a thousand jobs and thirty browsers polling that is the Studio's busiest
path. The index remembers each job's job.json by (mtime, size) and each events.jsonl by the byte offset read so far:
a poll stats the job folders, re-reads only the job.json files that changed and only the event bytes appended since
the last poll (Job.events_after). Anything on disk that changed (a job run from the terminal, a job deleted by hand)
is seen at the next poll. Two savings keep a class of thirty cheap: events.jsonl is looked at only for jobs that can
still change (not in a final state, or whose job.json just changed), and polls within `max_age_s` of the last scan
share it (changes made through this Studio reset that at once; the terminal's show within that age).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import JobError
from ..train.gpu_queue import queue_order
from ..train.jobs import EVENTS_FILE, JOB_FILE, Job, JobStore
from ..train.runner import FINAL_STATES


@dataclass
class Digest:
    """What the page needs from one job's events: the last progress, its samples and checkpoints, the last error."""

    offset: int = 0
    progress: dict[str, Any] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    lora: str | None = None

    def add(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            kind = e.get("type")
            if kind == "progress":
                self.progress = e
            elif kind == "sample":
                self.samples.append(e)
            elif kind == "checkpoint":
                self.checkpoints.append(str(e.get("path", "")))
            elif kind == "error":
                self.error = e
            elif kind == "done":
                self.lora = e.get("lora_path")


@dataclass
class Entry:
    job: Job
    info: dict[str, Any]
    stamp: tuple[int, int]
    events_stamp: tuple[int, int] = (0, 0)
    digest: Digest = field(default_factory=Digest)
    # The last JobView built from this entry and what it was built from (views.cached_view).
    view: dict[str, Any] | None = None
    view_key: tuple[Any, ...] | None = None


def _stamp(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class JobIndex:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._scanned_at = 0.0
        self._sorted: list[Entry] = []
        # Derived once per scan, for the list route: the queue's order and each owner's entries.
        self.queue_ids: list[str] = []
        self.by_owner: dict[str | None, list[Entry]] = {}

    def invalidate(self) -> None:
        self._scanned_at = 0.0

    def refresh(self, max_age_s: float = 0.0) -> list[Entry]:
        """Every job, newest first, with its info and event digest current (as of at most `max_age_s` ago)."""
        with self._lock:
            if max_age_s > 0 and time.monotonic() - self._scanned_at < max_age_s:
                return list(self._sorted)
            seen: dict[str, Entry] = {}
            root = self.store.root
            try:
                folders = list(os.scandir(root))
            except FileNotFoundError:
                folders = []
            for d in folders:
                if not d.is_dir() or d.name.startswith("."):
                    continue
                stamp = _stamp(os.path.join(d.path, JOB_FILE))  # a str join: Path() here costs more than the stat
                if stamp is None:
                    continue
                entry = self._entries.get(d.name)
                changed = entry is None or entry.stamp != stamp
                if changed:
                    try:
                        job = entry.job if entry else Job(root, d.name)
                        info = job.info
                    except (JobError, ValueError):
                        continue
                    if entry is None:
                        entry = Entry(job=job, info=info, stamp=stamp)
                    else:
                        entry.info, entry.stamp = info, stamp
                assert entry is not None
                if changed or entry.info.get("state") not in FINAL_STATES:
                    self._update_events(entry)
                seen[d.name] = entry
            self._entries = seen
            self._sorted = sorted(seen.values(), key=lambda e: (e.info.get("created") or 0, e.job.id), reverse=True)
            self.queue_ids = [job.id for job, _ in queue_order((e.job, e.info) for e in self._sorted)]
            by_owner: dict[str | None, list[Entry]] = {}
            for e in self._sorted:
                by_owner.setdefault(e.info.get("owner"), []).append(e)
            self.by_owner = by_owner
            self._scanned_at = time.monotonic()
            return list(self._sorted)

    def entry(self, job: Job) -> Entry:
        """One job's entry, current (a single stat and read when it changed)."""
        with self._lock:
            entry = self._entries.get(job.id)
            stamp = _stamp(job.dir / JOB_FILE)
            if entry is None or entry.stamp != stamp:
                entry = Entry(job=job, info=job.info, stamp=stamp or (0, 0),
                              digest=entry.digest if entry else Digest(),
                              events_stamp=entry.events_stamp if entry else (0, 0))
                self._entries[job.id] = entry
            self._update_events(entry)
            return entry

    @staticmethod
    def _update_events(entry: Entry) -> None:
        stamp = _stamp(entry.job.dir / EVENTS_FILE) or (0, 0)
        if stamp == entry.events_stamp:
            return
        if stamp[1] < entry.digest.offset:  # replaced by something shorter: read again from the start
            entry.digest = Digest()
        events, entry.digest.offset = entry.job.events_after(entry.digest.offset)
        entry.digest.add(events)
        entry.events_stamp = stamp

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._entries.pop(job_id, None)
            self._scanned_at = 0.0
