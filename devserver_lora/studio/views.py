"""The JSON the page reads for a job (JobView in STUDIO_API.md), built from the index (job.json + event digest)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..invocation import TRAIN_MODULE
from ..train.evaluate.lossplot import LOSS_PLOT_FILE
from ..train.evaluate.report import INSTALL_FILE, REPORT_HTML
from ..train.gpu_queue import is_queued
from .config import StudioConfig
from .index import Entry


def run_argv(config: StudioConfig, job_id: str, backend: str | None, *, resume: bool = False) -> list[str]:
    """What the terminal runs to start (or resume) this job in the same store."""
    return [config.python, "-m", TRAIN_MODULE, "resume" if resume else "run", job_id, "--backend", backend or "auto",
            "--home", str(config.settings.home), "--jobs-dir", str(config.jobs_dir), "--detach"]


def _rel(job_dir: Path, path: str) -> str | None:
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(job_dir).as_posix()
    except ValueError:
        return None


def file_url(base: str, job_id: str, rel: str) -> str:
    return f"{base}/api/lora/jobs/{job_id}/files/{rel}"


def job_view(config: StudioConfig, entry: Entry, queue: list[str], base: str) -> dict[str, Any]:
    info, digest, job = entry.info, entry.digest, entry.job
    queued = is_queued(info)
    state = "queued" if queued else str(info.get("state", "created"))
    prog = digest.progress or {}
    progress = {
        "step": prog.get("step", 0), "total": prog.get("total_steps", 0),
        "loss": None if prog.get("loss_is_nan") else prog.get("loss"), "loss_is_nan": bool(prog.get("loss_is_nan")),
        "eta_s": prog.get("eta_s"), "epoch": prog.get("epoch"),
    }
    samples = []
    for s in digest.samples:
        rel = _rel(job.dir, str(s.get("path", "")))
        if rel:
            samples.append({"url": file_url(base, job.id, rel), "step": s.get("step"), "prompt": s.get("prompt"),
                            "seed": s.get("seed"), "index": s.get("index")})
    installed = None
    if (job.dir / INSTALL_FILE).is_file():
        try:
            installed = job.read_json(INSTALL_FILE)
        except Exception:  # noqa: BLE001 - a damaged install record shows as "not installed"
            installed = None
    backend = info.get("backend") or info.get("queue_backend")
    diagnosis = info.get("diagnosis") if state in ("failed", "cancelled") else None
    return {
        "id": job.id,
        "state": state,
        "owner": info.get("owner"),
        "parent": info.get("parent"),
        "output_name": info.get("output_name"),
        "family": info.get("family"),
        "preset": info.get("preset"),
        "backend": backend,
        # What it was made from (the Studio's request; a terminal job has none): to show and to prefill a variant.
        "dataset": (info.get("studio_request") or {}).get("dataset"),
        "trigger": (info.get("studio_request") or {}).get("trigger"),
        "overrides": (info.get("studio_request") or {}).get("overrides"),
        "created": info.get("created"),
        "updated": info.get("updated"),
        "message": info.get("message"),
        "hint": info.get("hint"),
        "progress": progress,
        "queue_position": queue.index(job.id) + 1 if queued and job.id in queue else None,
        "diagnosis": diagnosis,
        "samples": samples,
        "checkpoints": [Path(c).name for c in digest.checkpoints],
        "lora_path": info.get("lora_path"),
        "installed": installed,
        "report_url": file_url(base, job.id, REPORT_HTML) if (job.dir / REPORT_HTML).is_file() else None,
        "loss_plot_url": file_url(base, job.id, LOSS_PLOT_FILE) if (job.dir / LOSS_PLOT_FILE).is_file() else None,
        "command": shlex.join(run_argv(config, job.id, backend, resume=state in ("failed", "cancelled"))),
    }


def cached_view(config: StudioConfig, entry: Entry, queue: list[str], base: str) -> dict[str, Any]:
    """`job_view`, rebuilt only when job.json, events.jsonl, the queue position or the URL base changed: a list of a
    thousand mostly finished jobs is then mostly reused (install and report clear it: `forget_view`)."""
    position = queue.index(entry.job.id) if entry.job.id in queue else None
    key = (entry.stamp, entry.events_stamp, position, base)
    if entry.view is None or entry.view_key != key:
        entry.view, entry.view_key = job_view(config, entry, queue, base), key
    return entry.view


def forget_view(entry: Entry) -> None:
    entry.view = entry.view_key = None
