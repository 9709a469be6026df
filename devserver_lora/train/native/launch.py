"""Several-process native training, the worker side: `run_launched` starts and watches `accelerate launch`.

With `num_processes > 1` the worker does not train itself: it starts `accelerate launch` as a child in its
own process group (output appended to the job's log) and keeps owning the job's state. Each launched
process runs `python -m devserver_lora.train.native.rank` (see there), trains its share of every epoch
(accelerate's DDP), and only the main process writes events, checkpoints and the result file the worker reads
back. A stop is a file in the job's work folder that every rank polls, agreed on with an all-reduce, so all
ranks leave at the same step and the main one saves its state; the worker escalates to SIGTERM and then
SIGKILL on the child group only if the processes do not leave within the grace period.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ...errors import BackendError, Problem
from ...paths import atomic_write_json
from ..events import ErrorEvent
from .models import ModelSource

if TYPE_CHECKING:
    from ..jobs import Job

LAUNCH_MODULE = "devserver_lora.train.native.rank"
ALLOW_CPU_ENV = "DEVSERVER_LORA_ALLOW_CPU_MULTIPROCESS"
SPEC_FILE = "native_launch.json"
RESULT_FILE = "native_launch_result.json"
STOP_FILE = "native_launch.stop"
LOG_FILE = "runner.log"


class LaunchSpec(BaseModel):
    """What the launched processes need to rebuild the worker's backend (written to the job's work folder)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] | None = None
    source: ModelSource | None = None
    device: str | None = None
    export_format: str = "kohya"
    progress_interval_s: float = 0.5


# --- preflight ------------------------------------------------------------------------------
def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def multiprocess_problems(num_processes: int) -> list[Problem]:
    """`num_processes` must be a positive count of CUDA devices present (or CPU processes in the test mode)."""
    if num_processes < 1:
        return [Problem(f"--num-processes must be at least 1, not {num_processes}", code="bad_num_processes",
                        hint="use 1 for a single GPU or CPU, N for N GPUs")]
    if num_processes == 1 or os.environ.get(ALLOW_CPU_ENV) == "1":
        return []
    found = cuda_device_count()
    if found >= num_processes:
        return []
    return [Problem(
        f"--num-processes {num_processes} needs {num_processes} CUDA GPUs, but this machine has {found}",
        code="not_enough_gpus",
        hint=f"use --num-processes {max(found, 1)}"
        + (f" (or set {ALLOW_CPU_ENV}=1 to run several CPU processes, for testing only)" if found == 0 else ""),
    )]


# --- the worker side --------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for the launched processes' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_argv(job_dir: Path, *, num_processes: int, mixed_precision: str, port: int, resume: bool = False,
                python: str | None = None) -> list[str]:
    """The `accelerate launch` command (an argument list, never a shell string) for one job.

    `--multi_gpu` starts one process per device through torch's elastic launcher; on a machine without CUDA
    the same launcher starts CPU processes that talk over gloo (accelerate's `--cpu` would start only one).
    """
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise BackendError(f"unknown mixed precision {mixed_precision!r}", hint="use no, fp16 or bf16",
                           diagnosis="bad_mixed_precision")
    argv = [python or sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "-m", LAUNCH_MODULE, "--job-dir", str(job_dir)]
    if resume:
        argv.append("--resume")
    return argv


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def run_launched(spec: LaunchSpec, preflight: Callable[[Job], None], job: Job, *, num_processes: int,
                 resume: bool = False, stop: threading.Event | None = None, grace_s: float = 30.0,
                 poll_s: float = 0.2, python: str | None = None) -> Path:
    """Train `job` in `num_processes` launched processes; returns the final LoRA or raises BackendError.

    `spec` is what each process rebuilds its backend from; `preflight(job)` is the worker's own check (the
    launched processes check again).
    """
    import torch

    try:
        preflight(job)
    except BackendError as exc:
        job.append_event(ErrorEvent(diagnosis=exc.diagnosis, message=exc.message, hint=exc.hint))
        raise
    work = job.work_dir
    atomic_write_json(work / SPEC_FILE, spec.model_dump(mode="json"))
    for stale in (RESULT_FILE, STOP_FILE):
        (work / stale).unlink(missing_ok=True)
    precision = job.plan.hyper.mixed_precision if torch.cuda.is_available() else "no"
    argv = launch_argv(job.dir, num_processes=num_processes, mixed_precision=precision, port=free_port(),
                       resume=resume, python=python)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(job.logs_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - argument list; our own interpreter and modules
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(job.dir),
            start_new_session=True,  # its own group: a stop reaches the launcher and every rank, nothing else
            env=env, close_fds=True,
        )
    job.set_state("running", child_pid=proc.pid, child_pgid=proc.pid)
    stopped = False
    try:
        while proc.poll() is None:
            if stop is not None and stop.is_set():
                stopped = True
                _stop_child(proc, work / STOP_FILE, grace_s=grace_s)
                break
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:  # an exception in this loop (or KeyboardInterrupt) must not leave ranks behind
            _signal_group(proc.pid, signal.SIGKILL)
            _wait(proc, 10.0)
        job.set_state("running", child_pid=None, child_pgid=None)
    return _outcome(job, proc.returncode, stopped=stopped)


def _stop_child(proc: subprocess.Popen, stop_file: Path, *, grace_s: float) -> None:
    """Ask the ranks to stop after their current step; TERM, then KILL the group if they do not."""
    stop_file.write_text("stop\n", encoding="utf-8")
    if _wait(proc, grace_s):
        return
    _signal_group(proc.pid, signal.SIGTERM)
    if _wait(proc, max(grace_s / 2, 1.0)):
        return
    _signal_group(proc.pid, signal.SIGKILL)
    _wait(proc, 10.0)


def _outcome(job: Job, returncode: int | None, *, stopped: bool) -> Path:
    result_path = job.work_dir / RESULT_FILE
    result: dict[str, Any] | None = None
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = None
    if result and result.get("status") == "done":
        return Path(result["path"])
    if result and result.get("status") == "failed":
        raise BackendError(result.get("message") or "native training failed", hint=result.get("hint"),
                           diagnosis=result.get("diagnosis") or "native_crash")
    if stopped or (result and result.get("status") == "cancelled"):
        raise BackendError("training was stopped", hint="resume the job to continue from its last saved state",
                           diagnosis="cancelled")
    err = BackendError(
        f"the launched training processes exited with code {returncode} without reporting a result",
        hint=f"see {job.logs_dir / LOG_FILE} for what they printed; resume the job to continue from its last saved state",
        diagnosis="native_crash",
    )
    job.append_event(ErrorEvent(diagnosis=err.diagnosis, message=err.message, hint=err.hint))
    raise err
