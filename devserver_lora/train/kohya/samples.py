"""Samples during Kohya training, by sd-scripts' own SD3 sampler (`library/sd3_train_utils.sample_images` at the pin).

What we pass (flags checked against the recorded flag list like every other key): `--sample_prompts` (a JSON list
written into the job's work folder: prompt, negative_prompt, width, height, sample_steps, scale, seed; JSON so that
a prompt containing " --" cannot be read as an option, as it would in the .txt format), `--sample_every_n_steps`,
and `--sample_at_first`. `--sample_sampler` is not passed: the SD3 sampler ignores it (its Euler sampler is fixed).

What sd-scripts writes: `<output_dir>/sample/<output_name>_<num>_<index:02d>_<YYYYmmddHHMMSS>_<seed>.png`, where
<num> is the global step (`%06d`) for step samples and `e%06d` for the epoch call (the one before training is
`e000000`). It logs "generating sample images at step ..." first (a rich record: wrapped, the step on a later line). `SampleWatcher` publishes each finished file as a
job sample (step made absolute with the attempt's offset) and remembers whether sd-scripts died while sampling,
so the backend can go on without samples instead of failing the run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...paths import atomic_write_json
from ..evaluate.samples import publish_sample, sample_failed
from ..evaluate.settings import EvalSettings
from .progress import StepLine, parse_line

if TYPE_CHECKING:
    from ..jobs import Job

PROMPTS_FILE = "sample_prompts.json"
SAMPLE_DIR = "sample"
_STARTED = "generating sample images"


def prompt_list(settings: EvalSettings) -> list[dict[str, Any]]:
    """The `--sample_prompts` JSON: one dict per prompt, in the keys `train_util.load_prompts` reads."""
    return [{"prompt": p.prompt, "negative_prompt": settings.negative_prompt, "width": settings.size,
             "height": settings.size, "sample_steps": settings.steps, "scale": settings.cfg, "seed": p.seed}
            for p in settings.prompts]


def sample_config(settings: EvalSettings | None, work_dir: Path, *, write: bool) -> dict[str, Any]:
    """The config keys that switch sd-scripts' sampling on (none when the job samples nothing)."""
    if settings is None or not settings.samples_on:
        return {}
    path = Path(work_dir) / PROMPTS_FILE
    if write:
        atomic_write_json(path, prompt_list(settings))
    cfg: dict[str, Any] = {"sample_prompts": str(path.absolute()),
                           "sample_every_n_steps": int(settings.sample_every_n_steps or 0)}
    if settings.sample_at_first:
        cfg["sample_at_first"] = True
    return cfg


def parse_sample_name(name: str, output_name: str) -> tuple[int, int, int | None] | None:
    """(step, prompt index, seed) of a file sd-scripts' SD3 sampler wrote, or None for anything else.

    The epoch form counts as step 0 only for epoch 0 (before training); we never ask for per-epoch samples.
    """
    if not name.startswith(output_name + "_"):
        return None
    m = re.fullmatch(r"(?:e(?P<epoch>\d{6})|(?P<step>\d{6}))_(?P<index>\d{2})_\d{14}(?:_(?P<seed>\d+))?\.png",
                     name[len(output_name) + 1 :])
    if m is None or (m["epoch"] is not None and int(m["epoch"]) != 0):
        return None
    step = int(m["step"]) if m["step"] is not None else 0
    return step, int(m["index"]), int(m["seed"]) if m["seed"] is not None else None


class SampleWatcher:
    """Publishes the PNGs of one sd-scripts attempt as job samples, once each file is complete."""

    def __init__(self, job: Job, settings: EvalSettings | None, attempt_dir: Path, *, offset: int,
                 output_name: str) -> None:
        self.job, self.settings = job, settings
        self.dir = Path(attempt_dir) / SAMPLE_DIR
        self.offset, self.output_name = offset, output_name
        self.published: set[str] = set()
        # sd-scripts announced samples and has neither saved all of them nor trained a step since: a crash now is
        # the sampler's. (A crash in the step after a finished round is training's: OOM, a kill.)
        self.sampling = False
        self.sampling_step: int | None = None
        self.trained_step = 0  # the attempt's last step shown by sd-scripts' bar
        self._files: dict[int, set[int]] = {}  # attempt step -> prompt indices whose sample file is on disk

    @property
    def on(self) -> bool:
        return self.settings is not None and self.settings.samples_on

    def line(self, line: str, *, trained: bool) -> None:
        """Follow sd-scripts' output: a sampling announcement, or a training step (`trained`) that ends one."""
        if not self.on:
            return
        if _STARTED in line:
            # sd-scripts samples right after the step its bar just showed (or before the first one). The step in
            # the record itself is no use: rich wraps it onto a later line and puts `sd3_train_utils.py:400` here.
            self.sampling = True
            self.sampling_step = self.offset + self.trained_step
            self._note_round_done()  # files can be seen before this line is read
        elif trained:
            self.sampling = False
            item = parse_line(line)
            if isinstance(item, StepLine):
                self.trained_step = item.step

    def poll(self, *, final: bool = False) -> None:
        if not self.on or not self.dir.is_dir():
            return
        from PIL import Image

        assert self.settings is not None
        for path in sorted(self.dir.glob("*.png")):
            if path.name in self.published:
                continue
            parsed = parse_sample_name(path.name, self.output_name)
            if parsed is None:
                self.published.add(path.name)
                continue
            step, index, seed = parsed
            self._saw(step, index)
            try:
                with Image.open(path) as img:
                    img.load()  # sd-scripts writes in place: a half-written file fails here, and we try again
                    image = img.copy()
            except OSError as exc:
                if final:
                    self.published.add(path.name)
                    sample_failed(self.job, step=self.offset + step, index=index, error=exc)
                continue
            self.published.add(path.name)
            prompt = self.settings.prompts[index].prompt if index < len(self.settings.prompts) else ""
            try:
                publish_sample(self.job, image, step=self.offset + step, index=index, prompt=prompt, seed=seed)
            except OSError as exc:
                sample_failed(self.job, step=self.offset + step, index=index, error=exc)

    def _saw(self, step: int, index: int) -> None:
        self._files.setdefault(step, set()).add(index)
        self._note_round_done()

    def _note_round_done(self) -> None:
        """Once every prompt of the round being sampled has its file, the sampler is done."""
        if self.sampling and self.settings is not None and self.sampling_step is not None:
            done = self._files.get(self.sampling_step - self.offset, set())
            if len(done) >= len(self.settings.prompts):
                self.sampling = False
