"""What a job has to show, for the LoRA Studio's job page: `job_results(job)` lists the contact sheets, the report,
the loss plot and the samples of one job, each as a path relative to the job folder (posix), and only files that
exist (a page built from it never shows a broken image). Reading it never writes anything and never renders.

A damaged `evaluation/results.json` is not an error here: the listing says so in `problems` and lists the rest,
because a job page must still open.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ...errors import JobError
from ..jobs import Job
from .lossplot import LOSS_PLOT_FILE
from .report import REPORT_HTML, REPORT_JSON
from .results import SheetColumn, read_results
from .samples import samples_of


class SheetEntry(BaseModel):
    """One contact sheet of the job's last evaluation."""

    model_config = ConfigDict(extra="forbid")

    kind: str  # before_after, strength, strength_model, checkpoints, bias, ab (results.SHEET_KINDS)
    title: str  # English · German, as drawn on the sheet
    file: str  # the PNG, relative to the job folder
    note: str = ""
    columns: list[SheetColumn] = Field(default_factory=list)  # labels and numbers (mean change, CLIP score)


class SampleEntry(BaseModel):
    """One sample rendered during training."""

    model_config = ConfigDict(extra="forbid")

    step: int  # 0 = before the first training step
    index: int  # the prompt's place in the job's eval settings
    prompt: str
    seed: int | None
    file: str  # relative to the job folder


class JobResults(BaseModel):
    """Everything a job page links, relative to `job_dir`; None or empty when the job has not made it yet."""

    model_config = ConfigDict(extra="forbid")

    job: str
    job_dir: Path
    report: str | None = None  # report.html
    report_json: str | None = None
    loss_plot: str | None = None
    sheets: list[SheetEntry] = Field(default_factory=list)
    samples: list[SampleEntry] = Field(default_factory=list)  # by step, then prompt
    evaluated: float | None = None  # when `evaluate` last wrote results.json (epoch seconds)
    lora: str | None = None  # "<job id>/<file>" the evaluation rendered as the LoRA
    against: str | None = None  # the other job of the A/B sheet
    errors: list[str] = Field(default_factory=list)  # renders of the last evaluation that failed
    problems: list[str] = Field(default_factory=list)  # what could not be read

    def path(self, rel: str) -> Path:
        """The absolute path of one of the relative files above."""
        return self.job_dir / rel


def _existing(job_dir: Path, rel: str) -> str | None:
    root = job_dir.resolve()
    target = (root / rel).resolve()
    return Path(rel).as_posix() if root in target.parents and target.is_file() else None


def job_results(job: Job) -> JobResults:
    """The sheets, report, loss plot and samples of `job` that exist on disk now."""
    root = Path(job.dir)
    out = JobResults(job=job.id, job_dir=root, report=_existing(root, REPORT_HTML),
                     report_json=_existing(root, REPORT_JSON), loss_plot=_existing(root, LOSS_PLOT_FILE))
    for record in samples_of(job):
        try:
            rel = record.path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:  # an event naming a file outside the job folder is not shown
            continue
        out.samples.append(SampleEntry(step=record.step, index=record.index, prompt=record.prompt,
                                       seed=record.seed, file=rel))
    try:
        results = read_results(job)
    except JobError as exc:
        out.problems.append(exc.message)
        return out
    if results is None:
        return out
    out.evaluated, out.lora, out.against, out.errors = results.written, results.lora, results.against, results.errors
    for sheet in results.sheets:
        found = _existing(root, sheet.file)
        if found is None:
            out.problems.append(f"the {sheet.kind} sheet {sheet.file} is missing")
            continue
        out.sheets.append(SheetEntry(kind=sheet.kind, title=sheet.title, file=found, note=sheet.note,
                                     columns=sheet.columns))
    return out
