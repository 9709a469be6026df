"""Run a job detached from the terminal, follow it, cancel it, resume it. Works for every backend.

`start` spawns `python -m devserver_lora.train.runner --job-dir DIR ...` in a new
session (closing the terminal does not stop it; stdout/stderr go to the job's
logs/runner.log) and records its pid in job.json. That worker calls the backend
and records the outcome. `follow` re-attaches by reading what was appended to events.jsonl (polling,
bounded in time). `cancel` signals the worker's process group (it stops the
trainer cleanly), then kills what is left after a grace period; finished
checkpoints stay in outputs/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, DevserverLoraError, GpuBusyError, JobError
from ..invocation import python
from ..paths import atomic_write_json
from .events import ErrorEvent, JobState, StateEvent

if TYPE_CHECKING:  # jobs and settings load lazily here (the worker imports them when it starts)
    from .jobs import Job
    from .settings import Settings

RUNNER_MODULE = "devserver_lora.train.runner"
FINAL_STATES = ("done", "failed", "cancelled")
GPU_LOCK = ".gpu-queue.lock"  # in the jobs folder: held while a job is checked and started, and by the queue


def pid_alive(pid: int | None, *, marker: str | None = None) -> bool:
    """True if `pid` runs (and, where /proc exists, its command line holds `marker`, against pid reuse)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped: containers often lack a reaping init) is not running
        if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
            return False
    except (OSError, IndexError):
        pass
    if marker:
        try:
            text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            return True
        if text and marker not in text:
            return False
    return True


def runner_alive(job: Job) -> bool:
    info = job.info
    return pid_alive(info.get("pid"), marker=RUNNER_MODULE)


def start(
    job: Job,
    settings: Settings,
    *,
    backend: str = "auto",
    resume: bool = False,
    num_processes: int = 1,
    python: str | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Start the detached worker for `job`; returns its pid. JobError if the job is running or finished."""
    info = job.info
    state = info.get("state", "created")
    if state == "running" and runner_alive(job):
        raise JobError(f"job {job.id} is already running (pid {info.get('pid')})",
                       hint=f"follow it with `status {job.id} --follow`, or stop it with `cancel {job.id}`")
    if state == "done":
        raise JobError(f"job {job.id} is already done", hint=f"install it with `install {job.id}`")
    if resume and state == "created":
        raise JobError(f"job {job.id} never ran, so there is nothing to resume", hint=f"use `run {job.id}`")
    with gpu_lock(job.dir.parent):
        busy = training_elsewhere(job)
        if busy is not None:
            raise GpuBusyError(
                f"the GPU is busy: job {busy.id} is training, and one GPU trains one job at a time",
                hint=f"`run {job.id} --wait` starts it when the GPU is free (in queue order with the Studio's); "
                     f"`status {busy.id} --follow` shows the running one")
        return _spawn(job, settings, backend=backend, resume=resume, num_processes=num_processes, python=python,
                      env=env)


def gpu_lock(jobs_dir: Path) -> AbstractContextManager[None]:
    from .jobs import exclusive_lock

    return exclusive_lock(jobs_dir / GPU_LOCK)


def training_elsewhere(job: Job) -> Job | None:
    """Another job of `job`'s store whose worker is training now (a dead one is recorded as failed on the way)."""
    from .jobs import JobStore

    for other, info in JobStore(job.dir.parent).infos():
        if other.id != job.id and info.get("state") == "running" and reconcile(other) == "running":
            return other
    return None


def _spawn(job: Job, settings: Settings, *, backend: str, resume: bool, num_processes: int, python: str | None,
           env: dict[str, str] | None) -> int:
    settings_path = job.work_dir / "runner_settings.json"
    atomic_write_json(settings_path, settings.model_dump(mode="json"))
    argv = [python or sys.executable, "-m", RUNNER_MODULE, "--job-dir", str(job.dir), "--backend", backend,
            "--settings", str(settings_path), "--num-processes", str(num_processes)]
    if resume:
        argv.append("--resume")
    log = open(job.logs_dir / "runner.log", "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(  # noqa: S603 - argument list; our own interpreter and module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(job.dir),
            start_new_session=True,  # survives the terminal closing; cancel signals this group
            env={**os.environ, **(env or {})},
            close_fds=True,
        )
    finally:
        log.close()
    job.set_state("running", pid=proc.pid, pgid=proc.pid, backend=backend, started=time.time(),
                  message="resuming" if resume else "starting", child_pid=None, child_pgid=None)
    _REAPERS.append(proc)  # keep the Popen so its exit status is collected (no zombie while we live)
    return proc.pid


_REAPERS: list[subprocess.Popen] = []


def _append_state(job: Job, state: JobState, message: str = "") -> None:
    job.append_event(StateEvent(state=state, message=message))


def run_worker(job: Job, settings: Settings, *, backend: str, resume: bool, num_processes: int = 1,
               stop: threading.Event | None = None) -> int:
    """The worker body (also usable in-process): run the backend (the loss plot is redrawn meanwhile), write the
    job's report, then record the outcome. The report comes first so that whoever sees the final state finds it."""
    from .evaluate.live import LivePlot, finish

    with LivePlot(job):
        outcome = _run_backend(job, settings, backend=backend, resume=resume, num_processes=num_processes, stop=stop)
    finish(job, state=outcome.state, message=outcome.info.get("message"))
    # The event before the state: a follower that sees the final state has every event on disk already.
    _append_state(job, outcome.state, outcome.event_message)
    job.set_state(outcome.state, **outcome.info)
    return outcome.code


@dataclass
class _Outcome:
    code: int
    state: JobState
    info: dict[str, Any]
    event_message: str


def _run_backend(job: Job, settings: Settings, *, backend: str, resume: bool, num_processes: int,
                 stop: threading.Event | None) -> _Outcome:
    from .backends import get_backend

    stop = stop or threading.Event()
    job.set_state("running", pid=os.getpid(), pgid=os.getpgid(0), backend=backend, started=time.time(),
                  message="resuming" if resume else "running")
    _append_state(job, "running", "resuming" if resume else "training started")
    try:
        chosen = get_backend(backend, settings, num_processes=num_processes)
        job.set_state("running", backend=chosen.name)
        path = chosen.run(job, resume=resume, stop=stop)
    except BackendError as exc:
        if exc.diagnosis == "cancelled":
            kept = "finished checkpoints are kept"  # the state says "cancelled"; the message says what else
            return _Outcome(0, "cancelled", {"message": kept, "diagnosis": "cancelled"}, kept)
        return _failure(job, exc, diagnosis=exc.diagnosis)
    except DevserverLoraError as exc:
        return _failure(job, exc, diagnosis=None)
    except Exception as exc:  # noqa: BLE001 - a worker must always leave a final state behind
        traceback.print_exc()
        return _failure(job, exc, diagnosis="internal_error")
    trained = f"trained {Path(path).name}"
    return _Outcome(0, "done", {"lora_path": str(path), "message": trained, "diagnosis": None}, trained)


def _failure(job: Job, exc: Exception, *, diagnosis: str | None) -> _Outcome:
    message, hint = (exc.message, exc.hint) if isinstance(exc, DevserverLoraError) else (str(exc), None)
    last = job.events()[-3:]
    if not any(e.get("type") == "error" and e.get("message") == message for e in last):
        job.append_event(ErrorEvent(diagnosis=diagnosis, message=message, hint=hint))
    return _Outcome(1, "failed", {"message": message, "hint": hint, "diagnosis": diagnosis}, message)


def _load_job(job_dir: Path) -> Job:
    from .jobs import JobStore

    return JobStore(job_dir.parent).get(job_dir.name)


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"{python()} -m {RUNNER_MODULE}", description="detached training worker")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    from .settings import Settings

    job = _load_job(args.job_dir.resolve())
    settings = Settings.model_validate(json.loads(args.settings.read_text(encoding="utf-8")))
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closing terminal must not stop training
    return run_worker(job, settings, backend=args.backend, resume=args.resume, num_processes=args.num_processes,
                      stop=stop)


def _signal_group(pgid: int | None, sig: int, *, marker: str | None = None) -> bool:
    """Signal the process group `pgid` (from job.json) only if its leader still runs our command.

    job.json outlives the processes it names: after a crash or reboot its pids may belong to anything.
    `marker` (the job folder, on every command line we start for it) keeps a stale or edited pgid from
    signalling an unrelated group; 0, 1 and negative ids (our own group, init, everything) are never used.
    """
    if not isinstance(pgid, int) or isinstance(pgid, bool) or pgid <= 1:
        return False
    if marker is not None and not pid_alive(pgid, marker=marker):
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def cancel(job: Job, *, grace_s: float = 30.0, poll_s: float = 0.2) -> str:
    """Stop a running job: SIGTERM to the worker (which stops the trainer cleanly), SIGKILL after `grace_s`."""
    info = job.info
    state = info.get("state")
    if state in FINAL_STATES:
        raise JobError(f"job {job.id} is not running (state: {state})")
    if state == "created":
        _append_state(job, "cancelled", "cancelled before it started")
        job.set_state("cancelled", message="cancelled before it started")
        return "cancelled"
    # This cancel is about the worker running now. A resume may start a new one while we wait (the worker stops in
    # a second, the grace period is long): that run is not ours to kill or to mark cancelled.
    marker, pid = str(job.dir), info.get("pid")

    def ours_alive() -> bool:
        return pid_alive(pid, marker=RUNNER_MODULE)

    if ours_alive():
        _signal_group(info.get("pgid"), signal.SIGTERM, marker=marker)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and ours_alive():
            time.sleep(poll_s)
    info = job.info
    if info.get("pid") != pid:
        return str(info.get("state"))
    if ours_alive() or pid_alive(info.get("child_pid"), marker=marker):
        _signal_group(info.get("child_pgid"), signal.SIGKILL, marker=marker)
        _signal_group(info.get("pgid"), signal.SIGKILL, marker=marker)
        for _ in range(50):
            if not ours_alive():
                break
            time.sleep(0.1)
    if job.state not in FINAL_STATES and job.info.get("pid") == pid:
        _append_state(job, "cancelled", "killed after the grace period; finished checkpoints are kept")
        job.set_state("cancelled", message="killed after the grace period; finished checkpoints are kept",
                      diagnosis="cancelled")
    return job.state


def reconcile(job: Job) -> str:
    """A job that says "running" while its worker is gone crashed: record that (so `resume` can continue)."""
    info = job.info
    if info.get("state") == "running" and info.get("pid") and not runner_alive(job):
        time.sleep(0.2)  # the worker may be writing its final state right now
        if job.state == "running":
            msg = "the training worker stopped without recording an outcome (killed, crashed or machine restarted)"
            hint = (f"see {job.logs_dir / 'runner.log'} for what it printed; continue from the last saved state "
                    f"with `resume {job.id}`")
            job.append_event(ErrorEvent(diagnosis="worker_lost", message=msg, hint=hint))
            _append_state(job, "failed", msg)
            job.set_state("failed", message=msg, diagnosis="worker_lost", hint=hint)
    return job.state


def follow(
    job: Job,
    on_event: Callable[[dict], None],
    *,
    timeout_s: float = 7 * 24 * 3600.0,
    poll_s: float = 0.5,
    replay: bool = True,
) -> str:
    """Call `on_event` for each event (from the first with `replay`, else from now on) until the job reaches a
    final state; returns it. Each poll reads only what was appended to events.jsonl since the last one.

    Bounded: stops after `timeout_s` (returning the current state) and notices a dead worker.
    """
    offset = 0 if replay else job.events_after(0)[1]
    deadline = time.monotonic() + timeout_s
    while True:
        events, offset = job.events_after(offset)
        for event in events:
            on_event(event)
        state = reconcile(job)
        if state in FINAL_STATES:
            events, offset = job.events_after(offset)  # what the worker wrote with its final state
            for event in events:
                on_event(event)
            return state
        if time.monotonic() >= deadline:
            return state
        time.sleep(poll_s)


def wait(job: Job, *, timeout_s: float, poll_s: float = 0.1) -> str:
    return follow(job, lambda _e: None, timeout_s=timeout_s, poll_s=poll_s, replay=False)


if __name__ == "__main__":
    sys.exit(worker_main())
