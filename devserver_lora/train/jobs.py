"""The job store: one folder per training job, every file written atomically.

    <jobs_dir>/<job_id>/
        job.json        state ("created" | "running" | "done" | "failed" | "cancelled") + info; rewritten atomically
        plan.json       the TrainingPlan
        dataset.json    the dataset manifest (copy)
        card.json       the dataset card (copy)
        events.jsonl    typed events (events.py), one JSON line each, appended and flushed
        logs/  outputs/  work/

A crash may cut at most the last line of events.jsonl; readers skip a line that does not parse.
Job ids are `<output_name>-<UTC timestamp>[-n]`, safe as one path component.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import JobError
from ..paths import atomic_write_json, check_simple_name, safe_join
from .card import CARD_FILE, DatasetCard
from .dataset.manifest import DATASET_MANIFEST, DatasetManifest
from .events import JOB_STATES, Event, StateEvent, event_to_dict, parse_event
from .plan import TrainingPlan

JOB_FILE = "job.json"
PLAN_FILE = "plan.json"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = ".job.lock"
_LOCK = threading.Lock()


def parse_event_lines(raw: bytes) -> list[dict[str, Any]]:
    """The event objects in `raw` (lines of events.jsonl); a line cut by a crash, or garbage, is skipped."""
    out: list[dict[str, Any]] = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


_HELD = threading.local()


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), across processes.

    Re-entrant within one thread: the Studio's queue holds the GPU lock while it calls `runner.start`, which takes
    it too (a second flock on a new descriptor of the same file would wait for itself forever)."""
    key = os.path.abspath(path)
    held: set[str] = _HELD.__dict__.setdefault("paths", set())
    if key in held:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not on POSIX: the callers' in-process locks are all there is
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        yield
    finally:
        held.discard(key)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class JobSummary(BaseModel):
    id: str
    state: str
    output_name: str | None = None
    family: str | None = None
    preset: str | None = None
    created: float | None = None
    updated: float | None = None
    message: str | None = None


class Job:
    """A handle on one job folder. Cheap to create; every property reads from disk."""

    def __init__(self, root: Path, job_id: str) -> None:
        check_simple_name(job_id, what="job id")
        self.id = job_id
        self.dir = safe_join(root, job_id, what="job id")

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    # --- files -----------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return safe_join(self.dir, name, what="job file name")

    def write_json(self, name: str, obj: Any) -> Path:
        if hasattr(obj, "model_dump"):
            obj = obj.model_dump(mode="json")
        return atomic_write_json(self._path(name), obj)

    def read_json(self, name: str) -> Any:
        path = self._path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobError(f"job {self.id} has no {name}", hint=f"the job folder {self.dir} is incomplete") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JobError(f"job {self.id}: {name} is damaged ({exc})", hint="recreate the job from its plan") from exc

    @property
    def logs_dir(self) -> Path:
        return self._mkdir("logs")

    @property
    def outputs_dir(self) -> Path:
        return self._mkdir("outputs")

    @property
    def work_dir(self) -> Path:
        return self._mkdir("work")

    def _mkdir(self, name: str) -> Path:
        path = self._path(name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- content -----------------------------------------------------------------
    @property
    def plan(self) -> TrainingPlan:
        try:
            return TrainingPlan.model_validate(self.read_json(PLAN_FILE))
        except ValidationError as exc:
            raise JobError(f"job {self.id}: plan.json is not a valid plan: {exc}") from exc

    @property
    def card(self) -> DatasetCard:
        try:
            return DatasetCard.model_validate(self.read_json(CARD_FILE))
        except ValidationError as exc:
            raise JobError(f"job {self.id}: card.json is not a valid dataset card: {exc}") from exc

    @property
    def manifest(self) -> DatasetManifest:
        try:
            return DatasetManifest.model_validate(self.read_json(DATASET_MANIFEST))
        except ValidationError as exc:
            raise JobError(f"job {self.id}: dataset.json is not a valid manifest: {exc}") from exc

    @property
    def info(self) -> dict[str, Any]:
        return self.read_json(JOB_FILE)

    @property
    def state(self) -> str:
        return str(self.info.get("state", "created"))

    def set_state(self, state: str, **info: Any) -> dict[str, Any]:
        """Record a new state (and any extra info: pid, message, lora_path, ...) with an atomic rewrite."""
        if state not in JOB_STATES:
            raise JobError(f"unknown job state {state!r}", hint=f"one of {', '.join(JOB_STATES)}")
        with _LOCK, self._file_lock():
            try:
                current = self.info
            except JobError:
                current = {"id": self.id}
            current.update(info)
            current["state"] = state
            current["updated"] = time.time()
            self.write_json(JOB_FILE, current)
        return current

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive lock across processes (the runner and its detached worker both update job.json)."""
        with exclusive_lock(self._path(LOCK_FILE)):
            yield

    # --- events ------------------------------------------------------------------
    def append_event(self, event: Event | dict[str, Any]) -> dict[str, Any]:
        """Append one event as a JSON line, flushed and fsynced, so `status` sees it at once."""
        line = json.dumps(event_to_dict(event), ensure_ascii=False, allow_nan=False)
        path = self._path(EVENTS_FILE)
        with _LOCK:
            # O_APPEND makes each write land at the end even with a second writer.
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                # After a crash cut the last line, start on a fresh line so this event is not lost with it.
                lead = "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
                os.write(fd, (lead + line + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        return json.loads(line)

    def events(self, *, typed: bool = False) -> list[Any]:
        """Every complete event line (a line cut by a crash, or garbage, is skipped)."""
        try:
            raw = self._path(EVENTS_FILE).read_bytes()
        except FileNotFoundError:
            return []
        found = parse_event_lines(raw)
        if not typed:
            return found
        out: list[Any] = []
        for data in found:
            try:
                out.append(parse_event(data))
            except JobError:
                continue
        return out

    def events_after(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The events of the whole lines after byte `offset` of events.jsonl, and the offset after them.

        Only what was appended since `offset` is read, so a follower polling a long run reads each byte once.
        A line still being written (no newline yet) is left for the next call; a file shorter than `offset`
        (replaced) is read from its start again.
        """
        lines, end = self.event_lines_after(offset)
        return [event for _, event in lines], end

    def event_lines_after(self, offset: int) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """As `events_after`, each event with the byte offset just after its line (an SSE client's resume id)."""
        try:
            fd = os.open(self._path(EVENTS_FILE), os.O_RDONLY)
        except FileNotFoundError:
            return [], 0
        try:
            size = os.fstat(fd).st_size
            if size < offset:
                offset = 0
            data = os.pread(fd, size - offset, offset) if size > offset else b""
        finally:
            os.close(fd)
        out: list[tuple[int, dict[str, Any]]] = []
        pos = offset
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
            pos += len(line) + 1
            out.extend((pos, event) for event in parse_event_lines(line))
        return out, pos

    def summary(self) -> JobSummary:
        try:
            info = self.info
        except JobError:
            info = {"state": "failed", "message": "job.json missing or damaged"}
        return JobSummary(
            id=self.id,
            state=str(info.get("state", "created")),
            output_name=info.get("output_name"),
            family=info.get("family"),
            preset=info.get("preset"),
            created=info.get("created"),
            updated=info.get("updated"),
            message=info.get("message"),
        )


JobInfos = list[tuple[Job, dict[str, Any]]]  # a name of its own: JobStore.list shadows `list` in its body


class JobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def _new_id(self, output_name: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        base = f"{output_name[:96]}-{stamp}"
        job_id, n = base, 2
        while (self.root / job_id).exists():
            job_id = f"{base}-{n}"
            n += 1
        return check_simple_name(job_id, what="job id")

    def create(
        self,
        plan: TrainingPlan,
        *,
        manifest: DatasetManifest | dict | None = None,
        card: DatasetCard | dict | None = None,
    ) -> Job:
        """A new job folder holding the plan, manifest and card; state "created"."""
        if card is None:
            raise JobError(
                "a job needs the dataset card",
                hint="prepare the dataset with --card card.json (or the card flags) before training",
            )
        if manifest is None:
            from .dataset.manifest import load_manifest

            manifest = load_manifest(plan.dataset_dir)
        if isinstance(card, dict):
            card = DatasetCard.model_validate(card)
        if isinstance(manifest, dict):
            manifest = DatasetManifest.model_validate(manifest)
        self.root.mkdir(parents=True, exist_ok=True)
        with _LOCK:
            job_id = self._new_id(plan.output_name)
            job = Job(self.root, job_id)
            # mkdir without exist_ok claims the id even against another process.
            while True:
                try:
                    job.dir.mkdir()
                    break
                except FileExistsError:
                    job_id = self._new_id(plan.output_name)
                    job = Job(self.root, job_id)
        job.write_json(PLAN_FILE, plan)
        job.write_json(DATASET_MANIFEST, manifest)
        job.write_json(CARD_FILE, card.model_dump(mode="json"))
        for sub in ("logs", "outputs", "work"):
            (job.dir / sub).mkdir(exist_ok=True)
        now = time.time()
        job.write_json(
            JOB_FILE,
            {
                "id": job_id,
                "state": "created",
                "created": now,
                "updated": now,
                "output_name": plan.output_name,
                "family": plan.family,
                "preset": plan.preset,
                "backend": plan.backend,
            },
        )
        job.append_event(StateEvent(state="created", message=f"job created for {plan.output_name}"))
        return job

    def _ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        ids = [p.name for p in self.root.iterdir() if p.is_dir() and (p / JOB_FILE).is_file()]
        return sorted(ids, key=lambda i: (self.root / i / JOB_FILE).stat().st_mtime, reverse=True)

    def get(self, job_id: str) -> Job:
        try:
            check_simple_name(job_id, what="job id")
        except Exception:
            raise JobError(f"{job_id!r} is not a job id", hint=self._recent_hint()) from None
        if not (self.root / job_id / JOB_FILE).is_file():
            # Let a unique prefix stand for the id: students type the start of it.
            matches = [i for i in self._ids() if i.startswith(job_id)]
            if len(matches) == 1:
                return Job(self.root, matches[0])
            raise JobError(f"unknown job {job_id!r} in {self.root}", hint=self._recent_hint())
        return Job(self.root, job_id)

    def _recent_hint(self) -> str:
        ids = self._ids()[:5]
        return f"recent jobs: {', '.join(ids)}" if ids else "there are no jobs yet: create one with `run`"

    def list(self) -> list[JobSummary]:
        return [Job(self.root, i).summary() for i in self._ids()]

    def infos(self) -> JobInfos:
        """Every job with its job.json, in no order (a damaged folder is left out: it can neither run nor wait)."""
        found: JobInfos = []
        if not self.root.is_dir():
            return found
        for path in self.root.iterdir():
            if path.is_dir() and (path / JOB_FILE).is_file():
                job = Job(self.root, path.name)
                try:
                    found.append((job, job.info))
                except JobError:
                    continue
        return found
