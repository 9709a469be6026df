"""`jobs list` and `jobs show ID`: what is in the job store."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ...console import out, print_json
from ..jobs import JobStore
from ..settings import load_settings

_STATE_STYLE = {"done": "green", "failed": "bold red", "running": "cyan", "cancelled": "yellow", "created": ""}


def _store(args: argparse.Namespace) -> JobStore:
    return JobStore(load_settings(home=args.home, jobs_dir=args.jobs_dir).jobs_dir)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    jobs = store.list()
    if args.json:
        print_json({"jobs_dir": str(store.root), "jobs": [j.model_dump() for j in jobs]})
        return 0
    if not jobs:
        out.print(f"no jobs in {store.root}", highlight=False)
        return 0
    for j in jobs:
        style = _STATE_STYLE.get(j.state, "")
        state = f"[{style}]{j.state:9}[/]" if style else f"{j.state:9}"
        out.print(f"{j.id:48} {state} {j.family or '-':12} {j.preset or '-':11} {_when(j.updated)}"
                  f"{'  ' + j.message if j.message else ''}", markup=True, highlight=False)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    job = _store(args).get(args.job_id)
    info = job.info
    events = job.events()
    outputs = sorted(p.name for p in job.outputs_dir.glob("*.safetensors"))
    if args.json:
        print_json({"id": job.id, "dir": str(job.dir), "info": info, "plan": job.plan.model_dump(mode="json"),
                    "outputs": outputs, "events": events[-args.events:] if args.events else events})
        return 0
    plan = job.plan
    out.print(f"[bold]{job.id}[/] ({info.get('state')}) in {job.dir}", markup=True, highlight=False)
    out.print(f"  {plan.family}, preset {plan.preset}, {plan.num_images} images, {plan.hyper.max_train_steps} steps, "
              f"backend {info.get('backend') or plan.backend or 'auto'}", highlight=False)
    if info.get("message"):
        out.print(f"  message: {info['message']}", highlight=False)
    progress = [e for e in events if e.get("type") == "progress"]
    if progress:
        last = progress[-1]
        loss = "nan" if last.get("loss_is_nan") else last.get("loss")
        out.print(f"  progress: step {last.get('step')}/{last.get('total_steps')}, loss {loss}", highlight=False)
    for name in outputs:
        out.print(f"  output: {name}", highlight=False)
    for e in events[-args.events:]:
        text = e.get("message") or e.get("state") or e.get("path") or e.get("lora_path") or ""
        out.print(f"  {_when(e.get('ts'))} {e.get('type'):10} {text}", highlight=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list training jobs or show one")
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--home", type=Path, help="devserver-lora home (env DEVSERVER_LORA_HOME)")
        q.add_argument("--jobs-dir", type=Path, help="where jobs live (default: HOME/jobs)")
        q.add_argument("--json", action="store_true", help="print as JSON")

    q = jsub.add_parser("list", help="every job, newest first")
    common(q)
    q.set_defaults(func=cmd_list)
    q = jsub.add_parser("show", help="one job: plan, state, outputs and recent events")
    q.add_argument("job_id", help="job id (a unique prefix is enough)")
    q.add_argument("--events", type=int, default=10, help="how many recent events to show (default 10; 0 = all)")
    common(q)
    q.set_defaults(func=cmd_show)
