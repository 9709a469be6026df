"""One report per job: `report.json` (the facts, for programs) and `report.html` (the same facts for people), both
in the job folder, written by `evaluate`, at the end of every run (done, failed or cancelled) and by `install`.

The HTML is self-contained: plain HTML and inline CSS, no script, no font or file from anywhere but the job folder
(images are referenced by relative paths beside it: `loss_plot.png`, `samples/`, `evaluation/`), so it opens from
disk, from a ZIP, or from the LoRA Studio. It shows the dataset card, the plan and why, the loss plot, samples over
time, every contact sheet with its numbers, the install state and the output config.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import JobError
from ...paths import atomic_write_json, atomic_write_text
from .lossplot import LOSS_PLOT_FILE, series_of, write_loss_plot
from .report_html import render_html
from .results import read_results
from .samples import samples_of
from .settings import SETTINGS_FILE, EvalSettings, load_eval_settings

if TYPE_CHECKING:
    from ..jobs import Job
    from ..plan import TrainingPlan

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
INSTALL_FILE = "install.json"


def _safe(read: Any, default: Any = None) -> Any:
    try:
        return read()
    except (JobError, OSError, ValueError):
        return default


def _rel(job: Job, path: Path | str) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(Path(job.dir).resolve()).as_posix()
    except ValueError:
        return p.name


def _model_note(job: Job, plan: TrainingPlan, lora_arch: str | None) -> str | None:
    """A plain warning when the LoRA was trained on a test-sized model rather than the family's real one."""
    from ..families import get_family

    expected = _safe(lambda: get_family(plan.family).arch)
    if lora_arch and expected and lora_arch != expected:
        return (f"This job trained on a test-sized model ({lora_arch}), not on the {plan.family} model: its weights "
                "are random, so every picture here is noise. The numbers and the layout are real; the pictures "
                "say nothing about what a LoRA can learn.")
    return None


def _training(job: Job, events: list[dict[str, Any]]) -> dict[str, Any]:
    series = series_of(events)
    checkpoints = [{"file": name, "step": step} for step, name in series.checkpoints]
    done = [e for e in events if e.get("type") == "done"]
    if done:
        checkpoints.append({"file": Path(str(done[-1].get("lora_path", ""))).name, "step": done[-1].get("steps"),
                            "final": True})
    problems = [e.get("message", "") for e in events
                if e.get("type") == "error" or (e.get("type") == "log" and e.get("level") in ("warning", "error"))]
    return {
        "steps_done": series.steps[-1] if series.steps else 0,
        "total_steps": series.total_steps,
        "first_loss": series.losses[0] if series.losses else None,
        "last_loss": series.losses[-1] if series.losses else None,
        "last_smoothed_loss": series.smoothed[-1] if series.losses else None,
        "nan_steps": series.nan_steps,
        "checkpoints": checkpoints,
        "loss_plot": LOSS_PLOT_FILE if (Path(job.dir) / LOSS_PLOT_FILE).is_file() else None,
        "warnings": problems[-20:],
    }


def _samples(job: Job, settings: EvalSettings | None) -> dict[str, Any]:
    records = samples_of(job)
    steps = sorted({r.step for r in records})
    prompts = {r.index: (r.prompt, r.seed) for r in records}
    if settings is not None:
        for i, p in enumerate(settings.prompts):
            prompts.setdefault(i, (p.prompt, p.seed))
    grid = {(r.index, r.step): _rel(job, r.path) for r in records}
    return {
        "every_n_steps": settings.sample_every_n_steps if settings else None,
        "steps": steps,
        "prompts": [{"index": i, "prompt": p, "seed": s} for i, (p, s) in sorted(prompts.items())],
        "grid": [[grid.get((i, step)) for step in steps] for i in sorted(prompts)],
    }


def _install(job: Job) -> dict[str, Any] | None:
    data = _safe(lambda: job.read_json(INSTALL_FILE)) if (Path(job.dir) / INSTALL_FILE).is_file() else None
    if not isinstance(data, dict):
        return None
    config = None
    path = data.get("config_path")
    if path:
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
    return {**data, "output_config": config}


def _final_arch(job: Job) -> str | None:
    from ...lora.header import read_header

    outputs = Path(job.dir) / "outputs"
    files = sorted(outputs.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if outputs.is_dir() else []
    for path in reversed(files):
        meta = _safe(lambda p=path: read_header(p).metadata, {})
        if meta.get("devserver_lora.arch"):
            return str(meta["devserver_lora.arch"])
    return _safe(lambda: job.info.get("base_arch"))


def report_facts(job: Job, *, written_by: str, state: str | None = None, message: str | None = None
                 ) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (`state`/`message`: an outcome not yet in job.json)."""
    info = dict(_safe(lambda: job.info, {}) or {})
    if state is not None:
        info.update(state=state, message=message, updated=time.time())
    plan = _safe(lambda: job.plan)
    card = _safe(lambda: job.card)
    manifest = _safe(lambda: job.manifest)
    settings = _safe(lambda: load_eval_settings(job, create=False)) if plan is not None and manifest else None
    events = job.events()
    evaluation = _safe(lambda: read_results(job))
    arch = _final_arch(job)
    facts: dict[str, Any] = {
        "version": 1,
        "written": time.time(),
        "written_by": written_by,
        "job": {k: info.get(k) for k in ("id", "state", "message", "hint", "diagnosis", "backend", "output_name",
                                          "family", "preset", "created", "updated", "lora_path")},
        "note": _model_note(job, plan, arch) if plan is not None else None,
        "trained_on": arch,
        "card": card.model_dump(mode="json") if card is not None else None,
        "dataset": {"images": manifest.num_images if manifest else None,
                    "trigger": plan.trigger if plan else None,
                    "captions": [img.caption for img in manifest.images[:12]] if manifest else []},
        "plan": plan.model_dump(mode="json") if plan is not None else None,
        "training": _training(job, events),
        "eval_settings": settings.model_dump(mode="json") if settings else None,
        "eval_settings_file": SETTINGS_FILE,
        "samples": _samples(job, settings),
        "evaluation": evaluation.model_dump(mode="json") if evaluation else None,
        "install": _install(job),
        "files": {"report_html": REPORT_HTML, "report_json": REPORT_JSON, "loss_plot": LOSS_PLOT_FILE},
    }
    facts["job"]["id"] = facts["job"]["id"] or job.id
    return facts


def write_report(job: Job, *, written_by: str = "run", plot: bool = True, state: str | None = None,
                 message: str | None = None) -> Path:
    """Redraw the loss plot, then write report.json and report.html; returns the HTML's path."""
    if plot:
        write_loss_plot(job)
    facts = report_facts(job, written_by=written_by, state=state, message=message)
    atomic_write_json(Path(job.dir) / REPORT_JSON, facts)
    return atomic_write_text(Path(job.dir) / REPORT_HTML, render_html(facts, Path(job.dir)))
