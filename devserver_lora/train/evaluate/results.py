"""What `evaluate` found, as written to `<job>/evaluation/results.json` (the report reads it back).

Paths are relative to the job folder, so a job folder can be moved or zipped with its evaluation intact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...errors import JobError

if TYPE_CHECKING:
    from ..jobs import Job

EVAL_DIR = "evaluation"
RESULTS_FILE = "results.json"

SheetKind = Literal["before_after", "strength", "strength_model", "checkpoints", "bias", "ab"]
SHEET_KINDS: tuple[str, ...] = ("before_after", "strength", "strength_model", "checkpoints", "bias", "ab")
SHEET_TITLES: dict[str, str] = {
    "before_after": "Before / after · Vorher / nachher",
    "strength": "Strength sweep, model + text encoder · Stärke, Modell + Textencoder",
    "strength_model": "Strength sweep, model only · Stärke, nur Modell",
    "checkpoints": "Checkpoints · Zwischenstände",
    "bias": "Bias check: people not in the dataset · Bias-Prüfung: Menschen, die nicht im Datensatz sind",
    "ab": "A/B: two LoRAs side by side · A/B: zwei LoRAs nebeneinander",
}


class ImageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str | None  # relative to the job folder; None when the render failed
    kind: Literal["render", "difference"] = "render"
    prompt: str
    seed: int
    lora: str | None = None  # the ComfyUI name it rendered with (None: no LoRA)
    source: str | None = None  # "<job id>/<checkpoint file>"
    strength_model: float = 0.0
    strength_clip: float = 0.0
    error: str | None = None


class SheetColumn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    kind: Literal["base", "lora", "difference"]
    source: str | None = None
    strength_model: float | None = None
    strength_clip: float | None = None
    mean_abs_change: float | None = None  # vs the no-LoRA column, same prompt and seed (0-255 RGB units)
    clip_score: float | None = None


class SheetRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    title: str
    file: str
    note: str = ""
    rows: list[str]
    columns: list[SheetColumn]
    cells: list[list[str | None]]  # image files relative to the job folder (None: that render failed)
    layout: dict[str, int] = Field(default_factory=dict)  # cell size and the grid origin on the PNG


class EvaluationResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    job: str
    against: str | None = None
    written: float
    comfyui: str
    graph: str
    size: int
    steps: int
    cfg: float
    negative_prompt: str = ""
    lora: str  # the file evaluated as "the LoRA" (the final one unless chosen)
    clip_model: str | None = None
    images: list[ImageRecord] = Field(default_factory=list)
    sheets: list[SheetRecord] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    install_hint: str = ""


def read_results(job: Job) -> EvaluationResult | None:
    """The job's last evaluation, or None when it has none (a damaged file is an error that says so)."""
    path = job.dir / EVAL_DIR / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        return EvaluationResult.model_validate(job.read_json(f"{EVAL_DIR}/{RESULTS_FILE}"))
    except ValueError as exc:
        raise JobError(f"job {job.id}: {path} is not a valid evaluation ({exc})",
                       hint="run `evaluate` again to rewrite it") from exc
