"""One launched process of a several-process native training job (`python -m devserver_lora.train.native.rank`).

It rebuilds a one-process `NativeBackend` from the spec the worker wrote (`launch.LaunchSpec`), trains its share,
and (main rank only) writes events, checkpoints and the result file `launch.run_launched` reads back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ...errors import BackendError
from ...invocation import python
from ...paths import atomic_write_json
from ..events import Event, event_to_dict
from ..jobs import Job, JobStore
from .launch import LAUNCH_MODULE, RESULT_FILE, SPEC_FILE, STOP_FILE, LaunchSpec


class _StopFile(threading.Event):
    """Set by a signal or when the worker's stop file appears (checked by the loop between steps)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def is_set(self) -> bool:
        return super().is_set() or self.path.exists()


class _RankJob(Job):
    """The job as a non-main rank sees it: the same folder, readable, but its events and state are the main
    rank's to write (a rank's append_event and set_state write nothing)."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.dir.parent, job.id)

    def append_event(self, event: Event | dict[str, Any]) -> dict[str, Any]:
        return event_to_dict(event)

    def set_state(self, state: str, **info: Any) -> dict[str, Any]:
        return {**info, "state": state}


def _die_with_parent(poll_s: float = 0.5) -> None:
    """Exit when the launcher dies: torch's launcher puts each rank in its own session, so a SIGKILL to the
    launcher's group (the last step of a cancel) would otherwise leave ranks blocked in a collective forever."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(3)

    threading.Thread(target=watch, name="die-with-launcher", daemon=True).start()


def _write_result(job: Job, **result: Any) -> None:
    atomic_write_json(job.work_dir / RESULT_FILE, result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"{python()} -m {LAUNCH_MODULE}", description="one process of a native training job")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from accelerate import PartialState

    from .backend import NativeBackend

    _die_with_parent()
    job_dir = args.job_dir.resolve()
    job = JobStore(job_dir.parent).get(job_dir.name)
    spec = LaunchSpec.model_validate(json.loads((job.work_dir / SPEC_FILE).read_text(encoding="utf-8")))
    settings = None
    if spec.settings is not None:
        from ..settings import Settings

        settings = Settings.model_validate(spec.settings)
    state = PartialState(cpu=not torch.cuda.is_available())
    main_rank = state.is_main_process
    stop = _StopFile(job.work_dir / STOP_FILE)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    backend = NativeBackend(settings, source=spec.source, device=spec.device, export_format=spec.export_format,
                            progress_interval_s=spec.progress_interval_s)
    try:
        path = backend.run(job if main_rank else _RankJob(job), resume=args.resume, stop=stop)
    except BackendError as exc:
        if not main_rank:
            print(f"rank {state.process_index}: {exc.message}", file=sys.stderr, flush=True)
            return 1
        if exc.diagnosis == "cancelled":
            _write_result(job, status="cancelled", message=exc.message)
            return 0
        _write_result(job, status="failed", message=exc.message, hint=exc.hint, diagnosis=exc.diagnosis)
        return 1
    if main_rank:
        _write_result(job, status="done", path=str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
