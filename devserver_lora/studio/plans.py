"""Plan requests: validated like the CLI's flags, planned by the training package's `make_plan`, and spelled as the
command a terminal would run for the same plan (`python -m devserver_lora.train plan ... --create-job`).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import DatasetError, PlanError
from ..invocation import TRAIN_MODULE
from ..train.card import DatasetCard
from ..train.families import FAMILIES
from ..train.gpu import KNOWN_GPUS, GpuInfo, detect_gpu
from ..train.memory import ESTIMATE_BASIS
from ..train.plan import Hyperparameters, TrainingPlan, make_plan
from ..train.presets import get_preset, load_presets
from .config import StudioConfig
from .datasets import check_dataset_name, dataset_dir, prepared, read_card, read_view
from .ranges import MEMORY_SETTINGS, override_problems
from .replies import StudioRefusal, field, fields_from_validation, refusal_from

CPU_ID = "cpu"
DETECTED_ID = "detected"


def gpu_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@cache
def _detected() -> GpuInfo | None:
    return detect_gpu()


def gpus(config: StudioConfig) -> list[dict[str, Any]]:
    found = [{"id": CPU_ID, "label": "CPU (no GPU) / CPU (ohne GPU)", "vram_gb": 0}]
    local = _detected() if config.detect_gpu else None
    if local is not None:
        found.append({"id": DETECTED_ID, "label": f"{local.name} (this server / dieser Server)",
                      "vram_gb": local.vram_gb})
    found += [{"id": gpu_id(g.name), "label": g.name, "vram_gb": g.vram_gb} for g in KNOWN_GPUS.values()]
    return found


def resolve_gpu_id(config: StudioConfig, gid: str | None) -> tuple[GpuInfo | None, list[str]]:
    """The GpuInfo for an id of `gpus()` and the CLI flags that select the same one."""
    if gid is None:
        gid = DETECTED_ID if (config.detect_gpu and _detected() is not None) else CPU_ID
    if gid == CPU_ID:
        return None, ["--no-detect"]
    if gid == DETECTED_ID and config.detect_gpu and (local := _detected()) is not None:
        return local, ["--vram", f"{local.vram_gb:g}", "--gpu", local.name]
    for g in KNOWN_GPUS.values():
        if gpu_id(g.name) == gid:
            return g, ["--gpu", g.name]
    raise StudioRefusal(400, f"unknown GPU {gid!r}", hint="choose one of GET /api/lora/gpus",
                        fields=[field("gpu", f"unknown GPU {gid!r}", "choose one from the list")])


class PlanRequest(BaseModel):
    """The body of POST /plans and /jobs (STUDIO_API.md)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    owner: str | None = None  # a teacher may plan on a student's dataset
    family: str = "sd35_large"
    preset: str = "fotostudio"
    output_name: str | None = None
    trigger: str | None = Field(default=None, max_length=64)
    backend: Literal["native", "kohya"] | None = None
    gpu: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = None

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown model family {v!r}: choose one of {', '.join(FAMILIES)}")
        return v

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in load_presets():
            raise ValueError(f"unknown preset {v!r}: choose one of {', '.join(load_presets())}")
        return v

    @field_validator("output_name")
    @classmethod
    def _output_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError(f"output name {v!r} is not safe: use letters, digits, '.', '_' and '-' (up to 100)")
        return v

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if "," in v or "\n" in v or any(ord(c) < 32 for c in v):
            raise ValueError(f"trigger {v!r} is not usable: use one short word or phrase without commas")
        return v


def parse_plan_request(body: Any) -> PlanRequest:
    if not isinstance(body, dict):
        raise StudioRefusal(400, "the body must be a JSON object", hint="send Content-Type: application/json")
    try:
        req = PlanRequest.model_validate(body)
    except ValidationError as exc:
        raise StudioRefusal(400, "the plan request is not valid", hint="change the fields named below",
                            fields=fields_from_validation(exc)) from None
    check_dataset_name(req.dataset, what="dataset")
    bad = override_problems(get_preset(req.preset), req.overrides)
    named = {f["field"] for f in bad}
    bad += [f for f in hyper_problems(req) if f["field"] not in named]
    if bad:
        raise StudioRefusal(400, "some training settings are not valid", hint="change the fields named below",
                            fields=bad)
    return req


def hyper_problems(req: PlanRequest) -> list[dict[str, str]]:
    """Every invalid hyperparameter at once, by the CLI's own model (make_plan stops at the first group)."""
    steps = ("max_train_steps", "epochs")
    values = {k: v for k, v in get_preset(req.preset).hyper.items() if k not in steps}
    values.update({k: v for k, v in req.overrides.items() if k not in steps and k not in MEMORY_SETTINGS})
    try:
        Hyperparameters.model_validate({**values, "max_train_steps": 10**6, "epochs": 1})
    except ValidationError as exc:
        found = fields_from_validation(exc, prefix="hyper.")
    else:
        return []
    for f in found:  # a cross-check (alpha vs rank, warmup vs steps) names its field first in the message
        first = f["message"].split(" ", 1)[0]
        if f["field"] == "hyper" and first in Hyperparameters.model_fields:
            f["field"] = f"hyper.{first}"
    return found


@dataclass
class Planned:
    plan: TrainingPlan
    card: DatasetCard | None
    card_problems: list[dict[str, str]]
    argv: list[str]
    dataset_dir: Path

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def plan_command(config: StudioConfig, req: PlanRequest, dataset: Path, gpu_flags: list[str]) -> list[str]:
    """The argv of `python -m devserver_lora.train plan ... --create-job` that makes the same plan and job."""
    argv = [config.python, "-m", TRAIN_MODULE, "plan", str(dataset), "--family", req.family, "--preset", req.preset]
    if req.backend:
        argv += ["--backend", req.backend]
    argv += gpu_flags
    if req.output_name:
        argv += ["--name", req.output_name]
    for key in sorted(req.overrides):
        argv += ["--set", f"{key}={json.dumps(req.overrides[key])}"]
    argv += ["--home", str(config.settings.home), "--jobs-dir", str(config.jobs_dir), "--create-job"]
    return argv


def card_problems_of(card: DatasetCard | None) -> list[dict[str, str]]:
    if card is None:
        return [field("card", "the dataset has no card yet", "fill in the dataset card before training")]
    return [field(f"card.{p.path.removeprefix('$.')}", p.message, p.hint or "") for p in card.problems()]


def plan_for(config: StudioConfig, owner: str, req: PlanRequest, *, need_card: bool = False) -> Planned:
    """The plan (and the dataset's prepared form for this trigger, made on first use); with `need_card` an
    incomplete card is refused before anything is prepared."""
    folder = dataset_dir(config, owner, req.dataset)
    if not folder.is_dir():
        raise StudioRefusal(404, f"there is no dataset {req.dataset!r}", hint="upload it first, or pick one of yours",
                            fields=[field("dataset", "unknown dataset", "pick one from the list")])
    view = read_view(folder)
    if view.get("blocking"):
        raise StudioRefusal(400, f"the dataset {req.dataset} has blocking problems", hint="fix them and upload again",
                            fields=[field("dataset", "blocking problems", "see the dataset's check results")])
    card = read_card(folder)
    card_problems = card_problems_of(card)
    if need_card and card_problems:
        raise StudioRefusal(400, "the dataset card must be complete before a job is created",
                            hint="fill in the dataset card (title, description, source, rights holder, licence, "
                            "consent, cultural context, approved by)", fields=card_problems)
    gpu, gpu_flags = resolve_gpu_id(config, req.gpu)
    try:
        def plan_on(path: Path) -> TrainingPlan:
            return make_plan(req.family, req.preset, path, gpu=gpu, overrides=dict(req.overrides),
                             backend=req.backend, output_name=req.output_name, require_card=False)

        ready = prepared(config, folder, trigger=req.trigger, family=req.family, validate=plan_on)
        plan = plan_on(ready)
    except (PlanError, DatasetError) as exc:
        raise refusal_from(exc) from None
    return Planned(plan=plan, card=card, card_problems=card_problems,
                   argv=plan_command(config, req, ready, gpu_flags), dataset_dir=folder)


def memory_view(plan: TrainingPlan) -> dict[str, Any]:
    m = plan.memory
    where = f"{plan.gpu.name} ({plan.gpu.vram_gb:g} GB)" if plan.gpu else "the CPU (no GPU)"
    minutes = max(1, round(m.estimated_wall_time_s / 60))
    explanation = (f"On {where}: peak about {m.estimated_peak_vram_gb:.1f} GB, {m.estimated_host_ram_gb:.0f} GB host "
                   f"RAM, about {minutes} min. " + " ".join(f"{line}." if not line.endswith(".") else line
                                                            for line in plan.explanations)
                   + f" ({ESTIMATE_BASIS})")
    return {"explanation": explanation, "explanations": plan.explanations, **m.model_dump(mode="json")}


def plan_response(planned: Planned) -> dict[str, Any]:
    return {"plan": planned.plan.model_dump(mode="json"), "memory": memory_view(planned.plan),
            "problems": planned.card_problems, "command": planned.command, "argv": planned.argv}
