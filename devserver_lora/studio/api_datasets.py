"""Routes: datasets (upload, list, show, thumbnails, card)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Blueprint, jsonify, request, send_file
from pydantic import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from ..paths import check_simple_name
from ..train.card import DatasetCard
from ..train.dataset.checks import CheckOptions
from ..train.families import FAMILIES
from ..train.presets import load_presets
from .datasets import (
    THUMBS_DIR,
    check_dataset_name,
    dataset_dir,
    list_datasets,
    read_card,
    read_view,
    receive,
    rejudge_sizes,
    resolution_arg,
    write_card,
)
from .identity import is_teacher, require_user
from .replies import StudioRefusal, field, fields_from_validation
from .state import Studio


def dataset_view(base: str, folder: Path, *, resolution: int | None = None) -> dict[str, Any]:
    """The dataset as the page shows it; with `resolution`, each image's size judged for training at that size."""
    view = read_view(folder)
    if resolution is not None:
        rejudge_sizes(view, resolution)
    name = folder.name
    owner = view.get("owner")
    query = f"?owner={quote(owner)}" if owner else ""
    for image in view["images"]:
        thumb = image.pop("thumb", None)
        image["thumb_url"] = f"{base}/api/lora/datasets/{name}/thumbs/{thumb}{query}" if thumb else None
    card = read_card(folder) if (folder / "card.json").is_file() else None
    view["card"] = card.model_dump(mode="json") if card else None
    view["card_problems"] = [p.as_dict() for p in card.problems()] if card else []
    return view


def register(bp: Blueprint, studio: Studio) -> None:
    config = studio.config

    def folder_for(name: str) -> Path:
        """The dataset `name` of the asking user; a teacher may name another owner with ?owner=."""
        user = require_user(config)
        check_dataset_name(name, what="dataset")
        owner = request.args.get("owner") or user
        if owner != user and not is_teacher(config, user):
            raise StudioRefusal(403, "only teachers see other people's datasets", hint="open one of your own")
        folder = dataset_dir(config, owner, name)
        if not (folder / "view.json").is_file():
            raise StudioRefusal(404, f"there is no dataset {name!r}", hint="upload it first, or pick one of yours")
        return folder

    @bp.post("/api/lora/datasets")
    def upload_dataset() -> Any:
        user = require_user(config)
        limit = config.limits.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise StudioRefusal(413, f"the upload is larger than {limit // (1024 * 1024)} MB",
                                hint="upload fewer or smaller images, or ask for a larger limit")
        request.max_content_length = limit
        try:
            form, files = request.form, request.files.getlist("files")
        except RequestEntityTooLarge:
            raise StudioRefusal(413, f"the upload is larger than {limit // (1024 * 1024)} MB",
                                hint="upload fewer or smaller images") from None
        name = check_dataset_name(form.get("name"), what="name")
        family = form.get("family") or "sd35_large"
        if family not in FAMILIES:
            raise StudioRefusal(400, f"unknown model family {family!r}", hint=f"one of {', '.join(FAMILIES)}",
                                fields=[field("family", "unknown family", f"one of {', '.join(FAMILIES)}")])
        preset = form.get("preset") or None
        if preset is not None and preset not in load_presets():
            raise StudioRefusal(400, f"unknown preset {preset!r}", hint="choose one of GET /api/lora/presets",
                                fields=[field("preset", "unknown preset", "choose one from the list")])
        resolution = resolution_arg(form.get("resolution"), where="resolution")
        if resolution is None:  # the preset's, for the family; only its resolution: the preset may change later
            resolution = CheckOptions(family=family, preset=preset).target_resolution()
        folder = receive(config, user, name, files, family=family, resolution=resolution)
        return jsonify(dataset_view(request.script_root, folder)), 201

    @bp.get("/api/lora/datasets")
    def list_all() -> Any:
        user = require_user(config)
        everyone = is_teacher(config, user) and request.args.get("all") == "1"
        folders = list_datasets(config, None if everyone else user)
        return jsonify([dataset_view(request.script_root, f) for f in folders])

    @bp.get("/api/lora/datasets/<name>")
    def show(name: str) -> Any:
        folder = folder_for(name)
        resolution = resolution_arg(request.args.get("resolution"), where="resolution")
        return jsonify(dataset_view(request.script_root, folder, resolution=resolution))

    @bp.get("/api/lora/datasets/<name>/thumbs/<file>")
    def thumb(name: str, file: str) -> Any:
        folder = folder_for(name)
        check_simple_name(file, what="thumbnail name")
        path = folder / THUMBS_DIR / file
        if not path.is_file():
            raise StudioRefusal(404, f"no thumbnail {file}", hint="the image could not be read; see its problems")
        return send_file(path, mimetype="image/png", max_age=3600)

    @bp.put("/api/lora/datasets/<name>/card")
    def put_card(name: str) -> Any:
        folder = folder_for(name)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise StudioRefusal(400, "the card must be a JSON object", hint="send Content-Type: application/json",
                                fields=[field("card", "not a JSON object", "send the card's fields")])
        try:
            card = DatasetCard.model_validate(body)
        except ValidationError as exc:
            raise StudioRefusal(400, "the dataset card is incomplete or invalid",
                                hint="fill in every field named below", fields=fields_from_validation(exc)) from None
        write_card(folder, card)
        return jsonify(dataset_view(request.script_root, folder))
