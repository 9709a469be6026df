"""`python -m devserver_lora.train evaluate JOB --comfyui URL`: render the job's prompts through ComfyUI with and
without its LoRA and write contact sheets, per-image files, numbers and the report.

Sheets (each a PNG in `<job>/evaluation/`, rows = prompts at their fixed seeds, column 0 = no LoRA):
- `sheet_before_after.png`: no LoRA | the LoRA at 1.0 | the difference (x4, black = unchanged);
- `sheet_strength.png`: the LoRA at each strength of the sweep, model and text-encoder strength together;
- `sheet_strength_model.png`: the same with the text-encoder strength at 0 (model only);
- `sheet_checkpoints.png`: every saved checkpoint of the job at 1.0 (pick one: `install JOB --checkpoint FILE`);
- `sheet_bias.png`: the documented bias prompts (see `settings.py`) without and with the LoRA, and with the
  trigger word merged in as DevServer's Stage 4 would add it;
- `sheet_ab.png` (with `--against JOB_B`): no LoRA | this job's LoRA | the other job's LoRA.
Every render is also saved alone in `evaluation/images/` with its prompt, seed, strengths and LoRA file in its PNG
text chunks; `evaluation/results.json` holds all of it; the job's `report.html` is rewritten at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...comfy import ComfyClient, Timeouts, run_sync
from ...errors import JobError, LoraFileError, TrainingError
from ...invocation import train_command
from ...lora.header import read_header
from ...lora.triggers import merge_triggers
from ...paths import atomic_write_bytes, atomic_write_json
from ..install import list_checkpoints, pick_checkpoint, trained_arch
from .metrics import ClipScorer, mean, mean_abs_change
from .pngtext import png_bytes
from .render import ChunkGraph, LoraStage, Rendered, Renderer, RenderSettings, RenderSpec, default_timeouts, load_chunk
from .results import (
    EVAL_DIR,
    RESULTS_FILE,
    SHEET_KINDS,
    SHEET_TITLES,
    EvaluationResult,
    ImageRecord,
    SheetColumn,
    SheetRecord,
    read_results,
)
from .settings import EvalSettings, load_eval_settings
from .sheets import GAP, Sheet, compose, difference_image

if TYPE_CHECKING:
    from ..jobs import Job

IMAGES_DIR = "images"
DIFF_GAIN = 4.0


@dataclass
class EvalOptions:
    comfyui: str
    loras_dir: Path
    against: Job | None = None  # the other job, for the A/B sheet
    sheets: tuple[str, ...] = ()  # empty: every sheet (A/B only with `against`)
    lora_file: str | None = None  # a file of outputs/ to evaluate instead of the final LoRA
    size: int | None = None
    steps: int | None = None
    cfg: float | None = None
    chunk: Path | None = None
    base_model: str | None = None
    clip_from_checkpoint: bool = False
    clip_model: Path | None = None
    timeouts: Timeouts | None = None


@dataclass
class _Lora:
    path: Path
    name: str = ""  # ComfyUI name once staged
    job_id: str = ""
    label: str = ""
    arch: str = ""
    has_text_encoder: bool = True

    @property
    def source(self) -> str:
        return f"{self.job_id}/{self.path.name}"


@dataclass
class _Plan:
    """One sheet before rendering: rows, columns, and what each cell is."""

    kind: str
    rows: list[str]
    columns: list[SheetColumn]
    specs: list[list[RenderSpec | None]]  # None: the difference of columns 0 and 1
    note: str = ""
    prompts: list[str] = field(default_factory=list)


def _checkpoint_label(job: Job, path: Path) -> tuple[int, str]:
    """(sort key, label) of a saved LoRA file: its step where known, 'final' for the last one."""
    name = job.plan.output_name
    try:
        meta = read_header(path).metadata
        steps = int(meta.get("ss_steps", "") or -1)
    except (LoraFileError, ValueError):
        steps = -1
    stem = path.stem
    if stem == name:
        return (10**12, f"final{f', step {steps}' if steps >= 0 else ''}")
    tail = stem[len(name) + 1 :] if stem.startswith(name + "-") else stem
    if tail.startswith("step") and tail[4:].isdigit():
        return (int(tail[4:]), f"step {int(tail[4:])}")
    if tail.isdigit():
        return (steps if steps >= 0 else int(tail) * 1000, f"epoch {int(tail)}{f', step {steps}' if steps >= 0 else ''}")
    return (steps, path.name)


def _the_lora(job: Job, lora_file: str | None) -> Path:
    if lora_file is not None:
        return pick_checkpoint(job, checkpoint=lora_file)
    try:
        return pick_checkpoint(job)
    except JobError:
        saved = list_checkpoints(job)
        if not saved:
            raise JobError(f"job {job.id} has no LoRA file to evaluate yet (state: {job.state})",
                           hint="wait until it saved a checkpoint, or resume it") from None
        return max(saved, key=lambda p: _checkpoint_label(job, p)[0])


def _lora_of(job: Job, path: Path, label: str) -> _Lora:
    from ...lora.report import inspect_lora

    header = read_header(path)
    return _Lora(path=path, job_id=job.id, label=label, arch=trained_arch(header.metadata, job),
                 has_text_encoder=inspect_lora(path).has_text_encoder)


def _row_label(prompt: str, seed: int) -> str:
    return f"{prompt}  (seed {seed})"


def _base_col() -> SheetColumn:
    return SheetColumn(label="no LoRA · ohne LoRA", kind="base")


def _lora_col(label: str, lora: _Lora, sm: float, sc: float) -> SheetColumn:
    return SheetColumn(label=label, kind="lora", source=lora.source, strength_model=sm, strength_clip=sc)


def _spec(prompt: str, seed: int, lora: _Lora | None, sm: float = 1.0, sc: float = 1.0) -> RenderSpec | None:
    if lora is None:
        return RenderSpec(prompt, seed)
    return RenderSpec(prompt, seed, lora.name, sm, sc, lora.source)


def plan_sheets(kinds: tuple[str, ...], settings: EvalSettings, lora: _Lora, checkpoints: list[_Lora],
                other: _Lora | None, trigger: str | None, a_name: str = "A") -> list[_Plan]:
    """What each requested sheet renders, cell by cell."""
    prompts = [(p.prompt, p.seed) for p in settings.prompts]
    rows = [_row_label(p, s) for p, s in prompts]
    plans: list[_Plan] = []
    for kind in kinds:
        if kind == "before_after":
            cols = [_base_col(), _lora_col(f"with LoRA · mit LoRA: {lora.label}", lora, 1.0, 1.0),
                    SheetColumn(label=f"difference ×{DIFF_GAIN:g} · Unterschied", kind="difference")]
            specs: list[list[RenderSpec | None]] = [[_spec(p, s, None), _spec(p, s, lora), None] for p, s in prompts]
            plans.append(_Plan(kind, rows, cols, specs, "black in the difference column = unchanged pixels"))
        elif kind in ("strength", "strength_model"):
            model_only = kind == "strength_model"
            cols = [_base_col()] + [_lora_col(f"{x:g}" + (" (model only)" if model_only else ""), lora, x,
                                              0.0 if model_only else x) for x in settings.strengths]
            specs = [[_spec(p, s, None)] + [_spec(p, s, lora, x, 0.0 if model_only else x) for x in settings.strengths]
                     for p, s in prompts]
            note = "strength 0 must look exactly like no LoRA"
            if not lora.has_text_encoder:
                note += ("; this LoRA has no text-encoder weights, so 'model only' renders the same as model + "
                         "text encoder")
            plans.append(_Plan(kind, rows, cols, specs, note))
        elif kind == "checkpoints":
            cols = [_base_col()] + [_lora_col(f"{c.label}: {c.path.name}", c, 1.0, 1.0) for c in checkpoints]
            specs = [[_spec(p, s, None)] + [_spec(p, s, c) for c in checkpoints] for p, s in prompts]
            plans.append(_Plan(kind, rows, cols, specs, "install the one you like best: "
                                                        + train_command(f"install {lora.job_id} --checkpoint FILE")))
        elif kind == "bias":
            bias = [(b.prompt, settings.bias_seed + i) for i, b in enumerate(settings.bias_prompts)]
            cols = [_base_col(), _lora_col("with LoRA, prompt as written", lora, 1.0, 1.0)]
            if trigger:
                cols.append(_lora_col(f"with LoRA + trigger '{trigger}' (as DevServer adds it)", lora, 1.0, 1.0))
            specs = []
            for p, s in bias:
                line = [_spec(p, s, None), _spec(p, s, lora)]
                if trigger:
                    line.append(_spec(merge_triggers(p, [trigger]), s, lora))
                specs.append(line)
            if bias:
                note = "people who are probably not in the dataset: what does the LoRA change about them?"
                if trigger:
                    note += " (the trigger column also changes the words, so its change counts both)"
                plans.append(_Plan(kind, [_row_label(p, s) for p, s in bias], cols, specs, note))
        elif kind == "ab" and other is not None:
            cols = [_base_col(), _lora_col(f"A: {a_name}, {lora.label}", lora, 1.0, 1.0),
                    _lora_col(f"B: {other.label}", other, 1.0, 1.0)]
            specs = [[_spec(p, s, None), _spec(p, s, lora), _spec(p, s, other)] for p, s in prompts]
            plans.append(_Plan(kind, rows, cols, specs, f"A = {lora.source}, B = {other.source}"))
    return plans


def evaluate_job(job: Job, options: EvalOptions, *, on_image: Callable[[int, int, Rendered], None] | None = None
                 ) -> EvaluationResult:
    """Render every requested sheet, write images, sheets and results.json, then the report. Returns the result."""
    kinds = _kinds(options)  # a refused request writes nothing: check what was asked before the defaults are saved
    LoraStage(options.loras_dir, job.id)
    settings = load_eval_settings(job)
    lora = _lora_of(job, _the_lora(job, options.lora_file), "")
    lora.label = _checkpoint_label(job, lora.path)[1]
    checkpoints = [_lora_of(job, p, _checkpoint_label(job, p)[1])
                   for p in sorted(list_checkpoints(job), key=lambda p: _checkpoint_label(job, p)[0])]
    against = options.against if "ab" in kinds else None  # _kinds refused "ab" without a second job
    other = _other_lora(job, lora, against) if against is not None else None
    everything = list({x.path: x for x in [lora, *checkpoints, *([other] if other else [])]}.values())
    render = RenderSettings(size=options.size or settings.size, steps=options.steps or settings.steps,
                            cfg=options.cfg if options.cfg is not None else settings.cfg,
                            negative_prompt=settings.negative_prompt)
    chunk, described = load_chunk(options.chunk, triple_clip=lora.has_text_encoder and options.chunk is None
                                  and not options.clip_from_checkpoint)
    graph = ChunkGraph(chunk, base_model=options.base_model, clip_from_checkpoint=options.clip_from_checkpoint,
                       description=described)
    scorer = ClipScorer(options.clip_model) if options.clip_model else None
    stage = LoraStage(options.loras_dir, job.id)
    try:
        names = {x.path: stage.add(x.path, "" if x.job_id == job.id else f"{x.job_id}--") for x in everything}
        for x in [lora, *checkpoints, *([other] if other else [])]:
            x.name = names[x.path]  # the final LoRA is also among the checkpoints: one file, one name
        plans = plan_sheets(kinds, settings, lora, checkpoints, other, job.plan.trigger, job.plan.output_name)
        arch_of = {x.name: x.arch for x in everything}
        result = run_sync(lambda: _render_all(job, plans, graph, render, options, stage, scorer, on_image, arch_of))
    finally:
        stage.remove()
    result.lora = lora.source
    result.against = against.id if against is not None else None
    result = _merge_previous(job, result, kinds)
    atomic_write_json(job.dir / EVAL_DIR / RESULTS_FILE, result.model_dump(mode="json"))
    from .report import write_report

    write_report(job, written_by="evaluate")
    return result


def _kinds(options: EvalOptions) -> tuple[str, ...]:
    wanted = options.sheets or tuple(k for k in SHEET_KINDS if k != "ab" or options.against is not None)
    unknown = [k for k in wanted if k not in SHEET_KINDS]
    if unknown:
        raise TrainingError(f"unknown sheet {unknown[0]!r}", hint=f"choose from {', '.join(SHEET_KINDS)}")
    if "ab" in wanted and options.against is None:
        raise TrainingError("the A/B sheet needs a second job", hint="pass --against JOB_B")
    return tuple(wanted)


def _other_lora(job: Job, lora: _Lora, other_job: Job) -> _Lora:
    if other_job.id == job.id:
        raise TrainingError("--against names the same job", hint="compare two different jobs, e.g. two presets")
    other = _lora_of(other_job, _the_lora(other_job, None), "")
    other.label = f"{other_job.plan.output_name}, {_checkpoint_label(other_job, other.path)[1]}"
    if other.arch != lora.arch:
        raise TrainingError(f"{job.id} was trained on {lora.arch} but {other_job.id} on {other.arch}",
                            hint="an A/B comparison needs two LoRAs of the same base model")
    return other


async def _render_all(job: Job, plans: list[_Plan], graph: ChunkGraph, render: RenderSettings, options: EvalOptions,
                      stage: LoraStage, scorer: ClipScorer | None,
                      on_image: Callable[[int, int, Rendered], None] | None, arch_of: dict[str, str]
                      ) -> EvaluationResult:
    eval_dir = job.dir / EVAL_DIR
    unique = list(dict.fromkeys(s for p in plans for line in p.specs for s in line if s is not None))
    async with ComfyClient(options.comfyui, timeouts=options.timeouts or default_timeouts()) as client:
        renderer = Renderer(client, graph, render, eval_dir / IMAGES_DIR, loras_dir=stage.loras_dir,
                            arch_of=arch_of, job_id=job.id)
        for i, spec in enumerate(unique, start=1):
            done = await renderer.render(spec)
            if on_image is not None:
                on_image(i, len(unique), done)
    result = EvaluationResult(job=job.id, written=time.time(), comfyui=options.comfyui, graph=graph.description,
                              size=render.size, steps=render.steps, cfg=render.cfg,
                              negative_prompt=render.negative_prompt, lora="",
                              clip_model=str(options.clip_model) if options.clip_model else None)
    records: dict[RenderSpec, ImageRecord] = {}
    for spec, done in renderer.done.items():
        rel = str(done.path.relative_to(job.dir)) if done.path else None
        records[spec] = ImageRecord(file=rel, prompt=spec.prompt, seed=spec.seed, lora=spec.lora, source=spec.source,
                                    strength_model=spec.strength_model if spec.lora else 0.0,
                                    strength_clip=spec.strength_clip if spec.lora else 0.0, error=done.error)
        if done.error:
            result.errors.append(f"{Path(spec.lora or 'no LoRA').name}, seed {spec.seed}: {done.error}")
    result.images = list(records.values())
    for plan in plans:
        result.sheets.append(_sheet(job, plan, renderer.done, render, scorer, result))
    result.install_hint = train_command(f"install {job.id} --checkpoint FILE")
    return result


def _difference(job: Job, base: Rendered, a: Any, b: Any, result: EvaluationResult) -> tuple[Any, str | None]:
    """The difference image of a row (saved alone like every render), or (None, None) when a render is missing."""
    if a is None or b is None or base.path is None:
        return None, None
    img = difference_image(a, b, gain=DIFF_GAIN)
    spec = base.spec
    path = job.dir / EVAL_DIR / IMAGES_DIR / f"diff_{base.path.name}"
    data = png_bytes(img, {"prompt": spec.prompt, "seed": spec.seed, "lora": spec.lora, "job": job.id,
                           "strength_model": spec.strength_model, "strength_clip": spec.strength_clip,
                           "difference_gain": DIFF_GAIN})
    atomic_write_bytes(path, data)
    rel = str(path.relative_to(job.dir))
    if not any(i.file == rel for i in result.images):
        result.images.append(ImageRecord(file=rel, kind="difference", prompt=spec.prompt, seed=spec.seed,
                                         lora=spec.lora, source=spec.source, strength_model=spec.strength_model,
                                         strength_clip=spec.strength_clip))
    return img, rel


def _cells(job: Job, plan: _Plan, done: dict[RenderSpec, Rendered], result: EvaluationResult
           ) -> tuple[list[list[Any]], list[list[str | None]]]:
    """The sheet's images and their files, row by row."""
    images: list[list[Any]] = []
    files: list[list[str | None]] = []
    for line in plan.specs:
        row_images: list[Any] = []
        row_files: list[str | None] = []
        for spec in line:
            if spec is None:
                lora_spec = line[1]
                assert lora_spec is not None
                img, rel = _difference(job, done[lora_spec], row_images[0], row_images[1], result)
            else:
                rendered = done[spec]
                img = rendered.image
                rel = str(rendered.path.relative_to(job.dir)) if rendered.path else None
            row_images.append(img)
            row_files.append(rel)
        images.append(row_images)
        files.append(row_files)
    return images, files


def _numbers(plan: _Plan, images: list[list[Any]], scorer: ClipScorer | None) -> list[SheetColumn]:
    """Each column with its mean change against column 0 and (optionally) its CLIP score."""
    columns = [c.model_copy() for c in plan.columns]
    for c, col in enumerate(columns):
        if col.kind == "lora":
            col.mean_abs_change = mean([mean_abs_change(row[0], row[c]) for row in images
                                        if row[0] is not None and row[c] is not None])
        if scorer is not None and col.kind != "difference":
            col.clip_score = mean([scorer.score(row[c], _prompt_of(plan.specs[r][c]))
                                   for r, row in enumerate(images) if row[c] is not None])
    return columns


def _note(col: SheetColumn) -> str:
    parts = []
    if col.mean_abs_change is not None:
        parts.append(f"change {col.mean_abs_change:.1f}")
    if col.clip_score is not None:
        parts.append(f"CLIP {col.clip_score:.1f}")
    return ", ".join(parts)


def _sheet(job: Job, plan: _Plan, done: dict[RenderSpec, Rendered], render: RenderSettings,
           scorer: ClipScorer | None, result: EvaluationResult) -> SheetRecord:
    images, files = _cells(job, plan, done, result)
    columns = _numbers(plan, images, scorer)
    title = SHEET_TITLES[plan.kind]
    subtitle = (f"{job.id} · {render.size} px, {render.steps} steps, cfg {render.cfg:g} · same seed in every row · "
                f"{plan.note}")
    sheet = Sheet(title=title, subtitle=subtitle, columns=[c.label for c in columns], rows=plan.rows, cells=images,
                  column_notes=[_note(c) for c in columns])
    img, layout = compose(sheet, render.size)
    path = job.dir / EVAL_DIR / f"sheet_{plan.kind}.png"
    data = png_bytes(img, {"sheet": plan.kind, "job": job.id})
    atomic_write_bytes(path, data)
    return SheetRecord(kind=plan.kind, title=title, file=str(path.relative_to(job.dir)), note=plan.note,
                       rows=plan.rows, columns=columns, cells=files,
                       layout={"cell": layout.cell, "origin_x": layout.origin_x, "origin_y": layout.origin_y,
                               "step": layout.cell + GAP, "width": layout.width, "height": layout.height})


def _prompt_of(spec: RenderSpec | None) -> str:
    return spec.prompt if spec is not None else ""


def _merge_previous(job: Job, result: EvaluationResult, kinds: tuple[str, ...]) -> EvaluationResult:
    """Keep the sheets of an earlier evaluation that this one did not redo, when they were rendered the same way."""
    try:
        previous = read_results(job)
    except JobError:
        return result
    if previous is None:
        return result
    same = (previous.graph, previous.size, previous.steps, previous.cfg, previous.negative_prompt, previous.lora) == (
        result.graph, result.size, result.steps, result.cfg, result.negative_prompt, result.lora)
    if not same:
        return result
    kept = [s for s in previous.sheets if s.kind not in kinds and (job.dir / s.file).is_file()]
    if not kept:
        return result
    files = {f for s in kept for line in s.cells for f in line if f}
    known = {i.file for i in result.images}
    result.images += [i for i in previous.images if i.file in files and i.file not in known]
    order = {k: n for n, k in enumerate(SHEET_KINDS)}
    result.sheets = sorted([*kept, *result.sheets], key=lambda s: order.get(s.kind, 99))
    if result.against is None:
        result.against = previous.against
    return result
