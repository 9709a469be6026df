"""The Studio's Flask blueprint: `mount` it into DevServer's app, or run it alone with `create_app`.

    from devserver_lora.studio import mount
    mount(app, data_dir="/srv/lora", loras_dir=".../ComfyUI/models/loras", user=lambda: session.get("user"),
          teachers=["frau_meyer"])

One `Studio` per mount holds the config, the job store (the training package's), its list index and the one-GPU
queue. Every refusal is answered in the one error shape (replies.py); nothing else leaves as HTML.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, jsonify, request, send_from_directory
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from ..errors import DevserverLoraError
from ..train.families import FAMILIES
from ..train.presets import load_presets
from . import api_datasets, api_jobs, devserver_routes
from .config import TeacherFn, UserFn, make_config
from .identity import current_user, is_teacher, require_user
from .plans import gpus, parse_plan_request, plan_for, plan_response
from .ranges import choices, preset_ranges
from .replies import StudioRefusal, refusal_from
from .state import Studio

EXTENSION = "lora_studio"
BLUEPRINT = "lora_studio"


def presets_body() -> dict[str, Any]:
    families = [{"id": f.name, "label_de": f.label, "label_en": f.label, "native": f.native_supported,
                 "default_resolution": f.default_resolution} for f in FAMILIES.values()]
    presets = [{"id": p.name, "label_de": p.label_de, "label_en": p.label_en, "explanation_de": p.explanation_de,
                "explanation_en": p.explanation_en, "min_images": p.min_images, "max_images": p.max_images,
                "min_vram_gb": p.min_vram_gb, "target_steps": p.target_steps, "hyper": dict(p.hyper),
                "ranges": preset_ranges(p)} for p in load_presets().values()]
    return {"families": families, "presets": presets, **choices()}


def _static_dir() -> Path:
    return Path(str(resources.files("devserver_lora.studio"))) / "static"


def make_blueprint(studio: Studio) -> Blueprint:
    config = studio.config
    bp = Blueprint(BLUEPRINT, __name__)

    @bp.errorhandler(StudioRefusal)
    def _refused(exc: StudioRefusal) -> Any:
        return exc.response()

    @bp.errorhandler(DevserverLoraError)
    def _ours(exc: DevserverLoraError) -> Any:
        return refusal_from(exc).response()

    @bp.errorhandler(ValidationError)
    def _invalid(exc: ValidationError) -> Any:
        return refusal_from(exc).response()

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        if not request.path.startswith(("/api/lora", "/api/training")):
            return exc
        return StudioRefusal(exc.code or 500, exc.name, hint=exc.description or "").response()

    @bp.get("/api/lora/me")
    def me() -> Any:
        user = current_user(config)
        return jsonify({"user": user, "teacher": is_teacher(config, user), "mounted": config.mounted})

    @bp.get("/api/lora/presets")
    def presets() -> Any:
        return jsonify(presets_body())

    @bp.get("/api/lora/gpus")
    def gpu_list() -> Any:
        return jsonify(gpus(config))

    @bp.post("/api/lora/plans")
    def plan() -> Any:
        user = require_user(config)
        req = parse_plan_request(request.get_json(silent=True))
        if req.owner not in (None, user) and not is_teacher(config, user):
            raise StudioRefusal(403, "only teachers plan on other people's datasets", hint="use one of your own")
        return jsonify(plan_response(plan_for(config, req.owner or user, req)))

    @bp.get("/lora")
    @bp.get("/lora/")
    def page() -> Any:
        return send_from_directory(_static_dir(), "index.html", max_age=0)

    @bp.get("/lora/static/<path:name>")
    def static_file(name: str) -> Any:
        return send_from_directory(_static_dir(), name, max_age=0)

    api_datasets.register(bp, studio)
    api_jobs.register(bp, studio)
    if config.devserver_routes:
        devserver_routes.register(bp, studio)
    return bp


def mount(
    app: Flask,
    *,
    data_dir: str | Path | None = None,
    loras_dir: str | Path | None = None,
    schemas_dir: str | Path | None = None,
    jobs_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    user: UserFn | None = None,
    teachers: Iterable[str] = (),
    teacher: TeacherFn | None = None,
    devserver_routes: bool = True,
    **options: Any,
) -> Studio:
    """Register the Studio on `app` (DevServer's Flask app): the page at /lora, the REST API under /api/lora/ and,
    with `devserver_routes`, DevServer's own /api/training/* routes backed by this package's trainer.

    `user` returns the user's name from the host's own login (None: not logged in); without it the page
    asks for a name and sends it as the X-Studio-User header (standalone use, and DevServer, which has no user
    accounts). `teachers` names teachers; `teacher` is the host's own per-request check (DevServer: its settings
    login, `session.get("settings_authenticated")`). Call it before DevServer registers its blueprints, or its
    own /api/training/* would answer (refused here with what to do)."""
    if devserver_routes:
        _check_training_routes_are_free(app)
    config = make_config(data_dir=data_dir, jobs_dir=jobs_dir, loras_dir=loras_dir, schemas_dir=schemas_dir,
                         models_dir=models_dir, user=user, teachers=teachers, teacher=teacher,
                         devserver_routes=devserver_routes, **options)
    studio = Studio(config)
    app.register_blueprint(make_blueprint(studio))
    app.extensions[EXTENSION] = studio
    studio.scheduler.start_thread()
    atexit.register(studio.scheduler.stop_thread)
    return studio


def _check_training_routes_are_free(app: Flask) -> None:
    """Flask serves a path with the view registered first: mounted after DevServer registered its own training
    blueprint, our /api/training/* would never answer and DevServer's shell-based trainer would. Checked before
    anything is registered or created."""
    adapter = app.url_map.bind("localhost")
    for path, method in (("/api/training/start", "POST"), ("/api/training/status", "GET")):
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
        except HTTPException:  # not served yet (404/405): ours will be the first
            continue
        if rule.rule != path:  # a catch-all such as DevServer's SPA route: a plain path of ours wins over it
            continue
        raise DevserverLoraError(
            f"{path} is already served by {rule.endpoint!r}, registered before mount(): DevServer's own training routes "
            "would answer instead of this package's",
            hint="call mount() in create_app() before DevServer registers its blueprints (right after "
                 "`Compress(app)`), or pass devserver_routes=False to leave /api/training/* to DevServer")


def create_app(**kwargs: Any) -> Flask:
    """A Flask app with only the Studio (standalone: `devserver-lora studio`)."""
    app = Flask("devserver_lora.studio")
    mount(app, **kwargs)
    return app
