"""`run`, `status`, `cancel`, `resume`: train detached from the terminal and re-attach to it at any time."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ...console import err, out, print_json
from ...errors import GpuBusyError
from ...invocation import train_command
from .. import runner
from ..backends import BACKEND_NAMES
from ..progress_view import describe_event, show_follow
from .check_cmds import add_location_flags, settings_from

if TYPE_CHECKING:
    from ..jobs import Job
    from ..settings import Settings


def _store(settings):
    from ..jobs import JobStore

    return JobStore(settings.jobs_dir)


def _job_or_new(settings, ref: str):
    """A job id, or a plan.json file from which a new job is created (dataset card from the dataset folder)."""
    path = Path(ref)
    if path.suffix == ".json" and path.is_file():
        from pydantic import ValidationError

        from ...errors import PlanError, Problem
        from ..card import load_card
        from ..plan import TrainingPlan

        try:
            plan = TrainingPlan.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            problems = [Problem(e["msg"], file=str(path), path=".".join(str(p) for p in e["loc"]), code=e["type"])
                        for e in exc.errors()[:20]]
            raise PlanError(f"{path} is not a valid plan.json ({exc.error_count()} problem(s))", problems,
                            hint="write it with `plan DATASET --out plan.json` rather than by hand") from None
        card = load_card(Path(plan.dataset_dir) / "card.json")
        job = _store(settings).create(plan, card=card)
        out.print(f"created job {job.id}", highlight=False)
        return job
    return _store(settings).get(ref)


def _cmd_run(args: argparse.Namespace, *, resume: bool = False) -> int:
    settings = settings_from(args)
    job = _job_or_new(settings, args.job)
    if not args.no_preflight and _refused_by_preflight(job, settings, args):
        return 1
    try:
        pid = runner.start(job, settings, backend=args.backend, resume=resume, num_processes=args.num_processes)
    except GpuBusyError as exc:
        if not args.wait:
            raise
        waited = _wait_for_gpu(job, settings, args, resume=resume, busy=exc)
        if waited is None:
            return 1
        pid = waited
    if args.json:
        print_json({"job": job.id, "pid": pid, "state": job.state, "resume": resume})
        if args.detach:
            return 0
    else:
        out.print(f"{'resumed' if resume else 'started'} job {job.id} (worker pid {pid}); it keeps running if you "
                  f"close this terminal", highlight=False)
    if args.detach:
        out.print(f"follow it with `{train_command(f'status {job.id} --follow')}`", highlight=False)
        return 0
    state = runner.wait(job, timeout_s=args.timeout) if args.json else show_follow(job, timeout_s=args.timeout)
    if args.json:
        print_json({"job": job.id, "state": state, "info": job.info})
    return 0 if state in ("done", "running") else 1


def _wait_for_gpu(job: Job, settings: Settings, args: argparse.Namespace, *, resume: bool,
                  busy: GpuBusyError) -> int | None:
    """Queue the job (the Studio's queue: one order for both) and pump it until the job starts; its worker pid."""
    from .. import gpu_queue

    gpu_queue.enqueue(job, resume=resume, backend=args.backend, num_processes=args.num_processes)
    err.print(f"{busy.message}. Job {job.id} is queued ({gpu_queue.position(job) or 0} before it) and starts when "
              f"the GPU is free; Ctrl-C leaves it queued, `{train_command(f'cancel {job.id}')}` takes it out",
              highlight=False)
    state = gpu_queue.wait_turn(job, settings, timeout_s=args.timeout)
    if state != "running":
        still = gpu_queue.is_queued(job.info)
        err.print(f"job {job.id} {'is still queued' if still else f'did not start ({state})'}", highlight=False)
        return None
    return int(job.info["pid"])


def _refused_by_preflight(job: Job, settings: Settings, args: argparse.Namespace) -> bool:
    """Check the chosen backend's setup in the foreground, so a student sees every blocker at once, before anything
    starts (a detached worker that fails a second later is easy to miss)."""
    from ..backends import get_backend
    from ..kohya.venv import blockers
    from .check_cmds import print_findings

    findings = get_backend(args.backend, settings, num_processes=args.num_processes).preflight(job)
    bad = blockers(findings)
    if not bad:
        return False
    if args.json:
        print_json({"job": job.id, "started": False, "findings": [p.as_dict() for p in findings]})
    else:
        print_findings(bad)
        err.print(f"not started: fix the above (`check --job {job.id}` shows everything), or --no-preflight")
    return True


def _last(events: list[dict], kind: str) -> dict | None:
    return next((e for e in reversed(events) if e.get("type") == kind), None)


def message_after_state(state: str | None, message: str | None) -> str:
    """A job's message as printed after its state: without the state said again (jobs cancelled before issue 12
    have the message "cancelled; finished checkpoints are kept", which printed "cancelled cancelled; ...")."""
    rest = (message or "").strip()
    if state and (rest == state or rest.startswith((f"{state};", f"{state}:", f"{state},"))):
        rest = rest[len(state):].lstrip(";:, ")
    return rest


def _cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    store = _store(settings)
    if not args.job:
        jobs = store.list()
        if args.json:
            print_json([j.model_dump(mode="json") for j in jobs])
        else:
            for j in jobs:
                rest = message_after_state(j.state, j.message)
                out.print(f"{j.id:50} {j.state:10} {j.family or '':12} {rest}", highlight=False)
            if not jobs:
                out.print("no jobs yet")
        return 0
    job = store.get(args.job)
    runner.reconcile(job)
    if args.follow and not args.json:
        state = show_follow(job, timeout_s=args.timeout)
        return 0 if state in ("done", "running") else 1
    if args.follow:
        runner.wait(job, timeout_s=args.timeout)
    events = job.events()
    info = job.info
    summary = {
        "job": job.id,
        "state": info.get("state"),
        "message": info.get("message"),
        "diagnosis": info.get("diagnosis"),
        "hint": info.get("hint"),
        "backend": info.get("backend"),
        "lora_path": info.get("lora_path"),
        "progress": _last(events, "progress"),
        "checkpoints": [e["path"] for e in events if e.get("type") == "checkpoint"],
        "error": _last(events, "error"),
    }
    if args.json:
        print_json(summary)
        return 0
    rest = message_after_state(summary["state"], summary["message"])
    out.print(f"job {job.id}: [bold]{summary['state']}[/]" + (f"; {rest}" if rest else ""), markup=True,
              highlight=False)
    prog = summary["progress"]
    if prog:
        loss = "nan" if prog.get("loss_is_nan") else prog.get("loss")
        out.print(f"  step {prog['step']}/{prog['total_steps']}  epoch {prog.get('epoch')}/{prog.get('total_epochs')}"
                  f"  loss {loss}  eta {prog.get('eta_s')} s", highlight=False)
    for path in summary["checkpoints"]:
        out.print(f"  checkpoint {path}", highlight=False)
    if summary["error"]:
        text = describe_event(summary["error"])
        out.print("  " + (text or ""), markup=True, highlight=False)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    job = _store(settings).get(args.job)
    from .. import gpu_queue

    if gpu_queue.is_queued(job.info):  # waiting for the GPU: out of the queue, so no pump starts it later
        state = gpu_queue.withdraw(job)
    else:
        state = runner.cancel(job, grace_s=args.grace)
    kept = [p.name for p in sorted(Path(job.outputs_dir).glob("*.safetensors"))]
    if args.json:
        print_json({"job": job.id, "state": state, "checkpoints": kept})
    else:
        out.print(f"job {job.id}: {state}; checkpoints kept: {', '.join(kept) or 'none'}", highlight=False)
        out.print(f"continue later with `{train_command(f'resume {job.id}')}`", highlight=False)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    return _cmd_run(args, resume=True)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                   help="kohya (sd-scripts in its venv), native, or auto (kohya if configured; default)")
    p.add_argument("--num-processes", type=int, default=1, help="GPUs to use via `accelerate launch` (Kohya)")
    p.add_argument("--detach", action="store_true", help="start and return at once (default: show progress)")
    p.add_argument("--wait", action="store_true",
                   help="if another job is training, queue this one and start it when the GPU is free")
    p.add_argument("--no-preflight", action="store_true",
                   help="start without checking the Kohya setup first (the check starts the venv's Python)")
    p.add_argument("--timeout", type=float, default=7 * 24 * 3600.0, help="stop following after this many seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_location_flags(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="start training a job (detached; survives closing the terminal)",
                       description="Start the job's training in the background and show its progress. "
                       "JOB is a job id, or a plan.json file from which a job is created.")
    p.add_argument("job", metavar="JOB")
    _add_run_flags(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("resume", help="continue a cancelled or failed job from its last saved state",
                       description="Continue training from the last saved state; step numbers keep counting.")
    p.add_argument("job", metavar="JOB")
    _add_run_flags(p)
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("status", help="show a job's state and progress (or list jobs); --follow re-attaches",
                       description="Without JOB: list jobs. With JOB: its state, progress, checkpoints, errors.")
    p.add_argument("job", metavar="JOB", nargs="?")
    p.add_argument("--follow", action="store_true", help="show live progress until the job ends")
    p.add_argument("--timeout", type=float, default=7 * 24 * 3600.0, help="stop following after this many seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_location_flags(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="stop a running job; finished checkpoints are kept",
                       description="Ask the trainer to stop, then kill it after the grace period.")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--grace", type=float, default=30.0, help="seconds to wait before killing (default 30)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_location_flags(p)
    p.set_defaults(func=_cmd_cancel)
