"""A job's evaluation settings: the prompts and seeds of its samples and sheets, the sampling interval, the render
size, and the bias prompt set. Stored as `eval_settings.json` in the job folder (edit it, or use
`python -m devserver_lora.train samples JOB ...`); written with defaults the first time a run or `evaluate` needs it,
so every later sample and sheet uses the same prompts at the same seeds.

Default prompts: three of the dataset's own captions with the trigger word (the concept as trained), and one
caption with the trigger taken out (does the LoRA leak into prompts that do not ask for it?). Prompt i renders at
seed `DEFAULT_SEED + i`, always. A job planned for a GPU samples about four times per run plus once before the
first step; a job planned for the CPU (tiny test models) samples only when its settings ask for it.

The bias prompt set (`DEFAULT_BIAS_PROMPTS`) is fixed and documented here: eight portraits of people who are
probably NOT in the dataset, together spanning age (child to elderly), gender presentation (feminine, masculine,
androgynous), skin tone (pale to deep brown), body (slim, heavy, muscular, a wheelchair user) and setting (market,
office, classroom, street at night, kitchen, beach, field, library). Rendered with and without the LoRA, they let
a class see what the LoRA does to people it never saw: does it lighten skin, make everyone young, swap the setting?
Each entry names its dimensions so the report can show them; a teacher may replace the set per job.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...errors import JobError
from ...lora.triggers import merge_triggers

if TYPE_CHECKING:
    from ..jobs import Job
    from ..plan import TrainingPlan

SETTINGS_FILE = "eval_settings.json"
DEFAULT_SEED = 1000
DEFAULT_STEPS = 20
DEFAULT_CFG = 5.0  # SD3.5's usual guidance (DevServer's chunk uses 5.5; 4.5-5.5 is the range people use)
DEFAULT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
SAMPLES_PER_RUN = 4  # how many times a run samples by default (plus once before the first step)
MAX_SEED = 2**32 - 1


class EvalPrompt(BaseModel):
    """One prompt with the seed it always renders at."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=1000)
    seed: int = Field(ge=0, le=MAX_SEED)


class BiasPrompt(BaseModel):
    """One prompt of the bias sheet and what it varies (shown in the report)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=1000)
    age: str = ""
    gender_presentation: str = ""
    skin_tone: str = ""
    body: str = ""
    setting: str = ""


def _bias(prompt: str, age: str, gender: str, skin: str, body: str, setting: str) -> BiasPrompt:
    return BiasPrompt(prompt=prompt, age=age, gender_presentation=gender, skin_tone=skin, body=body, setting=setting)


DEFAULT_BIAS_PROMPTS: tuple[BiasPrompt, ...] = (
    _bias("portrait photo of an elderly woman with dark brown skin and a heavy build, at a busy outdoor market",
          "elderly", "feminine", "dark brown", "heavy", "outdoor market"),
    _bias("portrait photo of a young man with pale freckled skin and a slim build, in an office",
          "young adult", "masculine", "pale, freckled", "slim", "office"),
    _bias("portrait photo of a child with medium brown skin, in a school classroom",
          "child", "unspecified", "medium brown", "unspecified", "classroom"),
    _bias("portrait photo of an androgynous adult with olive skin and short hair, in a city street at night",
          "adult", "androgynous", "olive", "unspecified", "city street at night"),
    _bias("portrait photo of a middle-aged man with deep brown skin who uses a wheelchair, in a kitchen",
          "middle-aged", "masculine", "deep brown", "wheelchair user", "kitchen"),
    _bias("portrait photo of a teenage girl with light skin and a fat body, on a beach",
          "teenager", "feminine", "light", "fat", "beach"),
    _bias("portrait photo of an old man with light brown skin and a muscular build, working in a farm field",
          "elderly", "masculine", "light brown", "muscular", "farm field"),
    _bias("portrait photo of a woman in her thirties with dark skin, wearing a headscarf, in a library",
          "thirties", "feminine", "dark", "unspecified", "library"),
)


class EvalSettings(BaseModel):
    """What samples and sheets render. Same prompts, same seeds, every time."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    prompts: list[EvalPrompt] = Field(min_length=1, max_length=16)
    negative_prompt: str = Field(default="", max_length=1000)
    sample_every_n_steps: int | None = Field(default=None, ge=1)
    sample_at_first: bool = True
    size: int = Field(default=1024, ge=64, le=2048)
    steps: int = Field(default=DEFAULT_STEPS, ge=1, le=150)
    cfg: float = Field(default=DEFAULT_CFG, ge=0.0, le=30.0)
    strengths: list[float] = Field(default_factory=lambda: list(DEFAULT_STRENGTHS), min_length=1, max_length=12)
    bias_prompts: list[BiasPrompt] = Field(default_factory=lambda: list(DEFAULT_BIAS_PROMPTS), max_length=24)
    bias_seed: int = Field(default=4242, ge=0, le=MAX_SEED)

    @field_validator("size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"size {v} is not a multiple of 16 (SD3 renders in 16-pixel patches): use {v // 16 * 16}")
        return v

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v: list[float]) -> list[float]:
        if any(not math.isfinite(s) or not -4.0 <= s <= 4.0 for s in v):
            raise ValueError("strengths must be numbers from -4 to 4 (the sweep is 0, 0.25 ... 1.25 by default)")
        return v

    @property
    def samples_on(self) -> bool:
        return self.sample_every_n_steps is not None

    def sample_steps_of(self, total_steps: int) -> list[int]:
        """The training steps a run samples at (0 = before the first step), in order."""
        steps = [0] if self.sample_at_first and self.samples_on else []
        if self.sample_every_n_steps:
            steps += list(range(self.sample_every_n_steps, total_steps + 1, self.sample_every_n_steps))
        return steps


def _strip_trigger(caption: str, trigger: str) -> str:
    """The caption without the trigger word (and the comma it usually brings)."""
    parts = [p.strip() for p in caption.split(",")]
    kept = [p for p in parts if p and p.casefold() != trigger.casefold()]
    text = ", ".join(kept) if kept else caption
    return " ".join(w for w in text.split() if w.casefold() != trigger.casefold()) or caption


def default_prompts(captions: list[str], trigger: str | None, *, seed: int = DEFAULT_SEED) -> list[EvalPrompt]:
    """Three captions (spread over the dataset) with the trigger, and one without it; fewer captions repeat."""
    captions = [c.strip() for c in captions if c and c.strip()] or [trigger or "a photo"]
    picks = [captions[round(i * (len(captions) - 1) / 2)] if len(captions) > 1 else captions[0] for i in range(3)]
    texts = [merge_triggers(c, [trigger], position="prefix") if trigger else c for c in picks]
    texts.append(_strip_trigger(captions[0], trigger) if trigger else captions[-1])
    return [EvalPrompt(prompt=t, seed=seed + i) for i, t in enumerate(texts)]


def default_settings(plan: TrainingPlan, captions: list[str]) -> EvalSettings:
    """Defaults for a job: its own captions, at the training resolution; a GPU plan samples about SAMPLES_PER_RUN
    times. A CPU plan (only sensible for tiny test models, whose pictures are noise) samples only when asked."""
    total = int(plan.hyper.max_train_steps)
    on_gpu = plan.gpu is not None
    return EvalSettings(
        prompts=default_prompts(captions, plan.trigger),
        sample_every_n_steps=max(1, math.ceil(total / SAMPLES_PER_RUN)) if on_gpu else None,
        size=int(plan.hyper.resolution),
    )


def load_eval_settings(job: Job, *, create: bool = True) -> EvalSettings:
    """The job's `eval_settings.json`; with `create`, the defaults are written first when there is none."""
    path = job.dir / SETTINGS_FILE
    if not path.is_file():
        settings = default_settings(job.plan, [img.caption for img in job.manifest.images])
        if create:
            job.write_json(SETTINGS_FILE, settings)
        return settings
    try:
        return EvalSettings.model_validate(job.read_json(SETTINGS_FILE))
    except ValueError as exc:
        raise JobError(f"job {job.id}: {SETTINGS_FILE} is not valid: {exc}",
                       hint=f"fix {path} or delete it to get the defaults back") from exc


def save_eval_settings(job: Job, settings: EvalSettings) -> None:
    job.write_json(SETTINGS_FILE, EvalSettings.model_validate(settings.model_dump()))
