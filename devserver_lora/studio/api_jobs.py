"""Routes: jobs (create, list, show, run, cancel, resume, delete, variant), their events, install, files, evaluation.

Every route goes through the training package's own job store and runner, so the terminal and the page act on the
same jobs: a job run with `python -m devserver_lora.train run` shows here, and `cancel` here stops it there.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file, stream_with_context

from ..errors import DevserverLoraError, JobError
from ..invocation import train_command
from ..paths import check_relative_name, safe_join
from ..train import runner
from ..train.backends import get_backend
from ..train.evaluate.report import REPORT_HTML
from ..train.evaluate.results import EVAL_DIR, read_results
from ..train.gpu_queue import is_queued
from ..train.install import install_job, trained_on
from ..train.jobs import Job
from ..train.kohya.venv import blockers
from ..train.plan import make_plan
from .config import StudioConfig
from .identity import is_teacher, may_see, require_user
from .plans import PlanRequest, parse_plan_request, plan_for, resolve_gpu_id
from .ranges import override_problems
from .replies import StudioRefusal, field, fields_from_problems, refusal_from
from .sse import stream
from .state import Studio
from .views import cached_view, file_url, forget_view, job_view

FILE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
              ".html": "text/html", ".json": "application/json", ".txt": "text/plain", ".jsonl": "application/json"}


def pin_model(config: StudioConfig, job: Job) -> None:
    """With a configured checkpoint, the job names its base model itself (model.json, read by the native backend),
    so `run` from the terminal trains on the same model."""
    if config.model_checkpoint is None:
        return
    from ..train.native.backend import MODEL_FILE
    from ..train.native.models import ModelSource, find_tokenizer_dir

    source = ModelSource(checkpoint=config.model_checkpoint)
    if find_tokenizer_dir("clip_l", source) is None:  # a test-sized checkpoint: the in-code tokenizer, as the demo
        source = source.model_copy(update={"tiny_tokenizer": True})
    job.write_json(MODEL_FILE, source)


def plan_samples(job: Job) -> None:
    """Sample images during training, so the job page shows what the LoRA learns (as `train demo` does): the first
    default prompt (the trigger with a caption), about three times per run, small. A run without a GPU is a test run:
    tiny samples in few steps; on a GPU 512 px at most, so sampling costs little of the training's time."""
    from ..train.evaluate.settings import load_eval_settings, save_eval_settings

    plan = job.plan
    settings = load_eval_settings(job)
    on_cpu = plan.gpu is None
    save_eval_settings(job, settings.model_copy(update={
        "prompts": settings.prompts[:1],
        "sample_every_n_steps": max(1, plan.hyper.max_train_steps // 3),
        "size": min(plan.hyper.resolution, 128 if on_cpu else 512),
        "steps": 4 if on_cpu else min(settings.steps, 20)}))


def check_can_start(config: StudioConfig, job: Job, backend: str) -> None:
    """The backend's own preflight, in the request: a student sees every blocker at once, before anything starts."""
    if not config.preflight:
        return
    try:
        findings = get_backend(backend, config.settings).preflight(job)
    except DevserverLoraError as exc:
        raise refusal_from(exc) from None
    bad = blockers(findings)
    if bad:
        raise StudioRefusal(400, f"the {backend} backend cannot start this job here",
                            hint="fix what is named below (the server's setup)", fields=fields_from_problems(bad))


def register(bp: Blueprint, studio: Studio) -> None:
    config, store, index, scheduler = studio.config, studio.store, studio.index, studio.scheduler

    def visible_job(job_id: str) -> tuple[str, Job]:
        user = require_user(config)
        try:
            job = store.get(job_id)
        except JobError:
            raise StudioRefusal(404, f"there is no job {job_id!r}", hint="pick one from the jobs list") from None
        if job.id != job_id:  # the store accepts a unique prefix; the API names jobs exactly
            raise StudioRefusal(404, f"there is no job {job_id!r}", hint="pick one from the jobs list")
        if not may_see(config, user, index.entry(job).info.get("owner")):
            raise StudioRefusal(404, f"there is no job {job_id!r}", hint="pick one from the jobs list")
        return user, job

    def view(job: Job) -> dict[str, Any]:
        return job_view(config, index.entry(job), scheduler.order(), request.script_root)

    def create(user: str, req: PlanRequest, *, parent: str | None) -> Job:
        planned = plan_for(config, req.owner or user, req, need_card=True)
        job = store.create(planned.plan, card=planned.card)
        job.set_state("created", owner=user, parent=parent, studio_request=req.model_dump(mode="json"),
                      plan_command=planned.command)
        pin_model(config, job)
        plan_samples(job)
        index.invalidate()
        return job

    @bp.post("/api/lora/jobs")
    def create_job() -> Any:
        user = require_user(config)
        req = parse_plan_request(request.get_json(silent=True))
        if req.owner not in (None, user) and not is_teacher(config, user):
            raise StudioRefusal(403, "only teachers plan on other people's datasets", hint="use one of your own",
                                fields=[field("owner", "not yours", "leave it out")])
        if req.parent is not None:
            visible_job(req.parent)
        job = create(user, req, parent=req.parent)
        return jsonify(view(job)), 201

    @bp.get("/api/lora/jobs")
    def list_jobs() -> Any:
        user = require_user(config)
        entries = index.refresh(max_age_s=config.list_max_age_s)
        queue = list(index.queue_ids)
        everyone = is_teacher(config, user) and request.args.get("all", "1") != "0"
        shown = entries if everyone else index.by_owner.get(user, [])
        base = request.script_root
        return jsonify({"jobs": [cached_view(config, e, queue, base) for e in shown], "queue": queue})

    @bp.get("/api/lora/jobs/<job_id>")
    def show_job(job_id: str) -> Any:
        _, job = visible_job(job_id)
        return jsonify(view(job))

    def _run(job: Job, *, resume: bool) -> Any:
        info = index.entry(job).info
        state = info.get("state")
        if is_queued(info):
            raise StudioRefusal(409, f"job {job.id} is already waiting in the queue", hint="wait, or cancel it")
        if state == "running":
            raise StudioRefusal(409, f"job {job.id} is running", hint="follow it, or cancel it")
        if state == "done":
            raise StudioRefusal(409, f"job {job.id} is done", hint="install it, or make a variant")
        if resume and state == "created":
            raise StudioRefusal(409, f"job {job.id} never ran, so there is nothing to resume", hint="run it")
        if not resume and state != "created":
            raise StudioRefusal(409, f"job {job.id} already ran ({state})", hint="resume it, or make a variant")
        backend = job.plan.backend or "auto"
        check_can_start(config, job, backend)
        scheduler.enqueue(job, resume=resume, backend=backend)
        scheduler.pump()
        return jsonify(view(job)), 202

    @bp.post("/api/lora/jobs/<job_id>/run")
    def run_job(job_id: str) -> Any:
        return _run(visible_job(job_id)[1], resume=False)

    @bp.post("/api/lora/jobs/<job_id>/resume")
    def resume_job(job_id: str) -> Any:
        return _run(visible_job(job_id)[1], resume=True)

    @bp.post("/api/lora/jobs/<job_id>/cancel")
    def cancel_job(job_id: str) -> Any:
        _, job = visible_job(job_id)
        info = index.entry(job).info
        if is_queued(info):
            scheduler.withdraw(job)
        elif info.get("state") in runner.FINAL_STATES:
            raise StudioRefusal(409, f"job {job.id} is not running ({info.get('state')})", hint="nothing to cancel")
        else:
            runner.cancel(job, grace_s=config.cancel_grace_s)
        index.invalidate()
        scheduler.pump()
        return jsonify(view(job))

    @bp.delete("/api/lora/jobs/<job_id>")
    def delete_job(job_id: str) -> Any:
        _, job = visible_job(job_id)
        info = job.info
        if info.get("state") in runner.FINAL_STATES:
            # The worker writes its final state, then exits: give it that moment before judging it still running.
            deadline = time.monotonic() + 10
            while runner.runner_alive(job) and time.monotonic() < deadline:
                time.sleep(0.1)
        if is_queued(info) or info.get("state") == "running" or runner.runner_alive(job):
            raise StudioRefusal(409, f"job {job.id} is {'queued' if is_queued(info) else 'running'}; its files stay",
                                hint="cancel it first")
        trash = job.dir.with_name(f".deleted-{job.id}-{os.getpid()}")
        os.rename(job.dir, trash)  # the job is gone from every list at once; the files follow
        shutil.rmtree(trash, ignore_errors=True)
        index.forget(job.id)
        return Response(status=204)

    @bp.post("/api/lora/jobs/<job_id>/variant")
    def variant(job_id: str) -> Any:
        user, parent = visible_job(job_id)
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or set(body) - {"overrides", "output_name", "gpu", "trigger"}:
            raise StudioRefusal(400, "a variant takes {\"overrides\": {...}, \"output_name\"?}",
                                hint="send only overrides and output_name",
                                fields=[field("body", "unexpected fields", "send overrides and output_name")])
        base = parent.info.get("studio_request")
        if isinstance(base, dict):
            merged = {**base, "overrides": {**base.get("overrides", {}), **(body.get("overrides") or {})},
                      "parent": parent.id}
            for key in ("output_name", "gpu", "trigger"):
                if key in body:
                    merged[key] = body[key]
            req = parse_plan_request(merged)
            job = create(user, req, parent=parent.id)
        else:
            job = _variant_of_terminal_job(user, parent, body)
        return jsonify(view(job)), 201

    def _variant_of_terminal_job(user: str, parent: Job, body: dict[str, Any]) -> Job:
        """A job made on the terminal has no Studio request: plan again on its dataset with the new settings."""
        plan = parent.plan
        overrides = body.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise StudioRefusal(400, "overrides must be an object", fields=[field("overrides", "not an object")])
        from ..train.presets import get_preset

        bad = override_problems(get_preset(plan.preset), overrides)
        if bad:
            raise StudioRefusal(400, "some settings are outside the preset's ranges", fields=bad)
        gpu = resolve_gpu_id(config, body["gpu"])[0] if body.get("gpu") else plan.gpu
        try:
            new = make_plan(plan.family, plan.preset, plan.dataset_dir, gpu=gpu, overrides=overrides,
                            backend=plan.backend, output_name=body.get("output_name") or plan.output_name)
        except DevserverLoraError as exc:
            raise refusal_from(exc) from None
        job = store.create(new, card=parent.card)
        job.set_state("created", owner=user, parent=parent.id)
        pin_model(config, job)
        plan_samples(job)
        index.invalidate()
        return job

    @bp.get("/api/lora/jobs/<job_id>/events")
    def events(job_id: str) -> Any:
        _, job = visible_job(job_id)
        raw = request.headers.get("Last-Event-ID") or request.args.get("from") or "0"
        try:
            offset = max(0, int(raw))
        except ValueError:
            raise StudioRefusal(400, f"Last-Event-ID {raw!r} is not an offset", hint="leave it out") from None
        body = stream(job, offset, base=request.script_root, poll_s=config.sse_poll_s, max_s=config.sse_max_s)
        return Response(stream_with_context(body), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @bp.post("/api/lora/jobs/<job_id>/install")
    def install(job_id: str) -> Any:
        _, job = visible_job(job_id)
        body = request.get_json(silent=True) or {}
        if not isinstance(body, dict) or set(body) - {"loras_dir", "config_name"}:
            raise StudioRefusal(400, "install takes {\"loras_dir\"?, \"config_name\"?}",
                                fields=[field("body", "unexpected fields", "send loras_dir and config_name only")])
        if job.state != "done":
            raise StudioRefusal(409, f"job {job.id} is {job.state}, not done", hint="install a finished job")
        loras_dir = config.loras_dir
        if body.get("loras_dir") is not None:
            if config.mounted:
                raise StudioRefusal(400, "the loras folder is configured by DevServer",
                                    fields=[field("loras_dir", "not allowed here", "leave it out")])
            loras_dir = Path(str(body["loras_dir"])).expanduser()
            if not loras_dir.is_absolute() or not loras_dir.is_dir():
                raise StudioRefusal(400, f"{loras_dir} is not an existing folder",
                                    fields=[field("loras_dir", "not an existing absolute folder",
                                                  "give ComfyUI's models/loras folder")])
        if loras_dir is None:
            raise StudioRefusal(400, "no loras folder is configured", hint="start the Studio with --loras-dir "
                                "(ComfyUI's models/loras) or set COMFYUI_LORAS_DIR",
                                fields=[field("loras_dir", "not configured", "give ComfyUI's models/loras folder")])
        try:
            # The Studio's ComfyUI renders with the base-model files the Studio trains on (issue 12 item 5: the
            # CLI installs for the family's model unless told otherwise).
            result = install_job(job, loras_dir=loras_dir, schemas_dir=config.schemas_dir,
                                 config_name=body.get("config_name"), against=trained_on(job))
        except DevserverLoraError as exc:
            raise refusal_from(exc, prefix="") from None
        forget_view(index.entry(job))
        config_body = None
        if result.config_path:
            import json

            config_body = json.loads(Path(result.config_path).read_text(encoding="utf-8"))
        return jsonify({"lora_file": result.lora_path, "lora_name": result.lora_name,
                        "config_path": result.config_path, "config_name": result.config_name,
                        "config": config_body, "warnings": result.warnings})

    @bp.get("/api/lora/jobs/<job_id>/files/<path:rel>")
    def job_file(job_id: str, rel: str) -> Any:
        _, job = visible_job(job_id)
        try:
            check_relative_name(rel, what="file path")
            path = safe_join(job.dir, rel, what="file path")
        except DevserverLoraError:
            raise StudioRefusal(404, f"no file {rel!r} in job {job.id}") from None
        kind = FILE_TYPES.get(path.suffix.lower())
        if kind is None or not path.is_file() or path.is_symlink():
            raise StudioRefusal(404, f"no file {rel!r} in job {job.id}", hint="images, report.html, .json and "
                                ".txt files of the job folder are served")
        return send_file(path, mimetype=kind, max_age=0)

    @bp.get("/api/lora/jobs/<job_id>/evaluation")
    def evaluation(job_id: str) -> Any:
        _, job = visible_job(job_id)
        try:
            result = read_results(job)
        except DevserverLoraError as exc:
            raise refusal_from(exc) from None
        if result is None:
            raise StudioRefusal(404, f"job {job.id} has no evaluation yet",
                                hint=f"evaluate it: {train_command(f'evaluate {job.id}')}")
        base = request.script_root
        sheets = [{"kind": s.kind, "title": s.title, "note": s.note, "url": file_url(base, job.id, s.file)}
                  for s in result.sheets]
        report = file_url(base, job.id, REPORT_HTML) if (job.dir / REPORT_HTML).is_file() else None
        return jsonify({"sheets": sheets, "report_url": report, "lora": result.lora, "errors": result.errors,
                        "dir": EVAL_DIR})
