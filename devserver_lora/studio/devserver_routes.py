"""DevServer's own training routes (`/api/training/*`, shapes in studio.md §2), backed by this package's trainer, so
DevServer's TrainingView.vue works unchanged on top of the Studio.

Differences from DevServer's implementation, each on purpose: inputs are validated (a safe project name, usable
trigger words, images only) before anything is written; the VRAM figure comes from the memory plan for this GPU and
the run DevServer's page starts (SD3.5 Large, preset fotostudio), not a fixed 50 GB; training runs through the job
store and the one-GPU queue (no shell); a project becomes a Studio dataset and job of the asking user, so it shows
on /lora too. Without a GPU, check-vram answers as DevServer does without one (500 with `error`).
DevServer's page has no dataset card form, so uploads through /start carry the card the admin configured at mount
(`devserver_card=`); without one, /start refuses and says so.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context
from pydantic import ValidationError
from werkzeug.datastructures import FileStorage

from ..errors import DevserverLoraError
from ..train import runner
from ..train.backends import auto_backend
from ..train.card import DatasetCard
from ..train.dataset.importers import is_image_name
from ..train.families import get_family
from ..train.gpu import GpuInfo, detect_gpu
from ..train.gpu_queue import is_queued
from ..train.install import install_job, trained_on
from ..train.memory import Workload, choose_memory_plan
from ..train.presets import get_preset
from .api_jobs import check_can_start, pin_model, plan_samples
from .datasets import dataset_dir, receive, remove_dataset
from .identity import current_user
from .index import Entry
from .plans import PlanRequest, plan_for
from .replies import StudioRefusal
from .state import Studio
from .views import forget_view

FAMILY = "sd35_large"
PRESET = "fotostudio"
PROJECT_KEY = "devserver_project"
DEFAULT_OWNER = "devserver"
NVIDIA_SMI_TIMEOUT_S = 10.0
EVENTS_POLL_S = 1.0
EVENTS_MAX_S = 6 * 3600.0


def _message(text: str, status: int = 400) -> tuple[Response, int]:
    return jsonify({"message": text}), status


def vram_now() -> dict[str, float] | None:
    """total/used/free GB of the first GPU from nvidia-smi, or None without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [exe, "--query-gpu=memory.total,memory.used,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        total, used, free = (float(x) for x in proc.stdout.strip().splitlines()[0].split(","))
    except (IndexError, ValueError):
        return None
    return {"total_gb": round(total / 1024, 1), "used_gb": round(used / 1024, 1), "free_gb": round(free / 1024, 1),
            "usage_percent": round(used / total * 100, 1) if total else 0.0}


def required_gb(gpu: GpuInfo) -> float:
    """The estimated peak of the cheapest memory plan that fits `gpu` for the run /start makes (the plan's own
    figure); DevServer's fixed 50 GB when nothing fits."""
    pre = get_preset(PRESET)
    fam = get_family(FAMILY)
    work = Workload(family=fam, resolution=min(int(pre.hyper.get("resolution", 1024)), fam.default_resolution),
                    batch_size=int(pre.hyper.get("batch_size", 1)), network_dim=int(pre.hyper.get("network_dim", 16)),
                    optimizer=str(pre.hyper.get("optimizer", "AdamW")), train_text_encoder=False,
                    num_images=pre.min_images, steps=pre.target_steps)
    try:
        memory, _choice, _notes = choose_memory_plan(work, gpu, backend=None, forced={})
    except DevserverLoraError:
        return 50.0
    return round(memory.estimated_peak_vram_gb, 1)


def _line(event: dict[str, Any]) -> str | None:
    kind = event.get("type")
    if kind == "progress":
        loss = "nan" if event.get("loss_is_nan") else event.get("loss")
        return f"steps: {event.get('step')}/{event.get('total_steps')} loss={loss}"
    if kind in ("log", "error"):
        return str(event.get("message"))
    if kind == "state":
        return f"[{event.get('state')}] {event.get('message') or ''}".strip()
    if kind == "checkpoint":
        return f"saved {Path(str(event.get('path'))).name}"
    if kind == "sample":
        return f"sample at step {event.get('step')}: {event.get('prompt')}"
    return None


def log_lines(entry: Entry | None) -> list[str]:
    if entry is None:
        return []
    events, _ = entry.job.events_after(0)
    return [line for e in events if (line := _line(e)) is not None]


def register(bp: Blueprint, studio: Studio) -> None:
    config, store, index, scheduler = studio.config, studio.store, studio.index, studio.scheduler

    def owner() -> str:
        return current_user(config) or DEFAULT_OWNER

    def current(project: str | None = None) -> Entry | None:
        """The newest job started through /start (of `project`), as DevServer has one training at a time."""
        for e in index.refresh():
            if e.info.get(PROJECT_KEY) and (project is None or e.info[PROJECT_KEY] == project):
                return e
        return None

    def busy() -> bool:
        return any(e.info.get("state") == "running" or is_queued(e.info) for e in index.refresh())

    @bp.get("/api/training/check-vram")
    def training_check_vram() -> Any:
        now = vram_now()
        gpu = detect_gpu() if now is not None else None
        if now is None or gpu is None:
            return jsonify({"error": "No GPU detected"}), 500
        need = required_gb(gpu)
        can = now["free_gb"] >= need
        return jsonify({**now, "can_train": can, "min_required_gb": need,
                        "recommendation": None if can else f"Free {need - now['free_gb']:.1f} GB VRAM to start training"})

    @bp.post("/api/training/clear-vram")
    def training_clear_vram() -> Any:
        data = request.get_json(silent=True) or {}
        if not isinstance(data, dict):
            return jsonify({"error": "the body must be a JSON object"}), 400
        results: dict[str, Any] = {"comfyui": None, "ollama": None, "errors": []}
        if data.get("unload_comfyui", True):
            results["comfyui"] = _free_comfyui(config.comfyui_url, config.clear_vram_timeout_s, results["errors"])
        if data.get("unload_ollama", True):
            results["ollama"] = "not managed by devserver-lora (DevServer unloads Ollama itself)"
        now = vram_now()
        if now is not None:
            results["new_used_gb"], results["new_free_gb"] = now["used_gb"], now["free_gb"]
        return jsonify({"success": not results["errors"], "results": results})

    @bp.post("/api/training/start")
    def training_start() -> Any:
        project = request.form.get("project_name")
        if not project:
            return _message("project_name is required")
        if "images" not in request.files:
            return _message("No images provided")
        if not _safe(project):
            return _message(f"project_name {project!r} is not usable: use letters, digits, '-' and '_' (up to 64)")
        triggers = [t.strip() for t in request.form.get("trigger_word", "").split(",") if t.strip()]
        if any(len(t) > 64 or "\n" in t for t in triggers):
            return _message("trigger words must be short words or phrases, separated by commas")
        images = request.files.getlist("images")
        if not all(is_image_name((f.filename or "").rsplit("/", 1)[-1]) for f in images):
            return _message("only images can be uploaded (.png, .jpg, .webp ...)")
        if busy():
            return _message("Training could not be started (already running?)")
        if config.devserver_card is None:
            return _message("this server has no dataset card for uploads from the training page: its admin sets "
                            "one with devserver_lora.studio.mount(..., devserver_card={...}) (see the README)")
        try:
            card = DatasetCard.model_validate({"title": project, **config.devserver_card})
        except ValidationError as exc:
            return _message(f"the configured devserver_card is invalid: {exc.errors()[0]['msg']}", 500)
        user = owner()
        name = _free_name(config, user, project)
        files = list(images)
        if len(triggers) > 1:  # DevServer captions every image with all trigger words when there are several
            caption = ", ".join(triggers).encode("utf-8")
            files += [FileStorage(io.BytesIO(caption), filename=Path(f.filename or "x").stem + ".txt") for f in images]
        try:
            folder = receive(config, user, name, files, family=FAMILY)
            card.write(folder / "card.json")
            # The backend is chosen now, as `auto` would at the start: the plan's steps follow it (Kohya: whole epochs).
            req = PlanRequest(dataset=name, family=FAMILY, preset=PRESET, output_name=project,
                              backend=auto_backend(config.settings),
                              trigger=triggers[0] if triggers else None, overrides=dict(config.devserver_overrides))
            planned = plan_for(config, user, req)
        except StudioRefusal as exc:
            remove_dataset(config, user, name)
            return _message(exc.message + (f" ({exc.hint})" if exc.hint else ""), 400)
        except DevserverLoraError as exc:
            remove_dataset(config, user, name)
            return _message(str(exc), 400)
        job = store.create(planned.plan, card=card)
        job.set_state("created", owner=user, parent=None, studio_request=req.model_dump(mode="json"),
                      **{PROJECT_KEY: project})
        pin_model(config, job)
        plan_samples(job)
        index.invalidate()
        try:
            check_can_start(config, job, planned.plan.backend or "auto")
        except StudioRefusal as exc:  # nothing stays behind of a start that cannot run here
            shutil.rmtree(job.dir, ignore_errors=True)
            remove_dataset(config, user, name)
            index.forget(job.id)
            detail = "; ".join(f"{f['message']} ({f['hint']})" if f.get("hint") else f["message"] for f in exc.fields)
            return _message(f"{exc.message}: {detail}" if detail else exc.message)
        scheduler.enqueue(job, resume=False, backend=planned.plan.backend or "auto")
        scheduler.pump()
        return jsonify({"message": "Training started", "details": {
            "job_id": job.id, "project_name": project, "dataset": name, "state": job.state,
            "total_steps": planned.plan.hyper.max_train_steps, "command": planned.command}})

    @bp.post("/api/training/stop")
    def training_stop() -> Any:
        entry = current()
        if entry is None or not (entry.info.get("state") == "running" or is_queued(entry.info)):
            return jsonify({"message": "Training stopped", "success": False})
        if is_queued(entry.info):
            scheduler.withdraw(entry.job)
        else:
            runner.cancel(entry.job, grace_s=config.cancel_grace_s)
        index.invalidate()
        return jsonify({"message": "Training stopped", "success": True})

    @bp.post("/api/training/delete")
    def training_delete() -> Any:
        data = request.get_json(silent=True)
        if not data or not isinstance(data, dict):
            return _message("Invalid JSON")
        project = data.get("project_name")
        if not project:
            return _message("Project name required")
        if not isinstance(project, str) or not _safe(project):
            return _message("Project name is not a project of this server")
        entry = current(project)
        if entry is not None and (entry.info.get("state") == "running" or is_queued(entry.info)):
            return _message("Could not delete files (training in progress?)")
        user = owner()
        for name in [project, *(f"{project}-{n}" for n in range(2, 100))]:
            folder = dataset_dir(config, user, name)
            if folder.is_dir():
                shutil.rmtree(folder)
        return jsonify({"message": "Project files deleted successfully"})

    @bp.get("/api/training/status")
    def training_status() -> Any:
        return jsonify(_status(current(), with_vram=True))

    @bp.get("/api/training/events")
    def training_events() -> Any:
        return Response(stream_with_context(_events()), content_type="text/event-stream")

    def _status(entry: Entry | None, *, with_vram: bool) -> dict[str, Any]:
        if entry is None:
            body: dict[str, Any] = {"is_training": False, "project_name": None, "progress": 0, "current_step": 0,
                                    "total_steps": 0, "log_lines": [], "error": None}
        else:
            entry = index.entry(entry.job)
            info, prog = entry.info, entry.digest.progress or {}
            step, total = int(prog.get("step") or 0), int(prog.get("total_steps") or 0)
            state = info.get("state")
            if state == "done":
                _install_once(entry)
                entry = index.entry(entry.job)
            body = {"is_training": state == "running" or is_queued(info), "project_name": info.get(PROJECT_KEY),
                    "progress": round(100 * step / total) if total else 0, "current_step": step, "total_steps": total,
                    "log_lines": log_lines(entry), "error": info.get("message") if state == "failed" else None}
        if with_vram:
            body["vram"] = vram_now()
        return body

    def _install_once(entry: Entry) -> None:
        """DevServer's trainer writes the LoRA straight into the loras folder; do the same once a run is done."""
        job = entry.job
        if config.loras_dir is None or (job.dir / "install.json").is_file():
            return
        try:
            install_job(job, loras_dir=config.loras_dir, schemas_dir=None, against=trained_on(job))
        except DevserverLoraError as exc:
            job.set_state("done", install_error=exc.message)
        forget_view(index.entry(job))

    def _events() -> Iterator[str]:
        import json

        sent = 0
        deadline = time.monotonic() + EVENTS_MAX_S
        while True:
            status = _status(current(), with_vram=False)
            lines = status["log_lines"]
            if len(lines) > sent:
                yield f"event: log\ndata: {json.dumps(lines[sent:])}\n\n"
                sent = len(lines)
            yield f"event: status\ndata: {json.dumps({'is_training': status['is_training'], 'error': status['error']})}\n\n"
            if not status["is_training"]:
                yield f"event: done\ndata: {json.dumps({'message': 'Training finished'})}\n\n"
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(EVENTS_POLL_S)


def _safe(project: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", project) is not None


def _free_name(config: Any, user: str, project: str) -> str:
    for name in [project, *(f"{project}-{n}" for n in range(2, 100))]:
        if not dataset_dir(config, user, name).exists():
            return name
    raise StudioRefusal(409, f"project {project} has 99 uploads", hint="delete the project first")


def _free_comfyui(url: str, timeout_s: float, errors: list[str]) -> str:
    from ..comfy.client import ComfyClient, Timeouts
    from ..errors import ComfyUnreachable

    async def go() -> None:
        async with ComfyClient(url, timeouts=Timeouts(connect=min(5.0, timeout_s), http=timeout_s)) as client:
            await asyncio.wait_for(client.free(unload_models=True, free_memory=True), timeout_s)

    try:
        asyncio.run(go())
    except ComfyUnreachable:
        return "ComfyUI not running (OK)"
    except (DevserverLoraError, TimeoutError) as exc:
        errors.append(f"ComfyUI: {exc}")
        return "not freed"
    return "Models unloaded successfully"
