"""Samples rendered during training land in the job's `samples/` folder and are announced as `sample` events.

File names: `samples/step{STEP:08d}_p{INDEX:02d}_seed{SEED}.png` (step 0 = before the first training step; INDEX is
the prompt's place in the job's eval settings). Both backends publish through `publish_sample`, so the report and
the Studio read one layout. A sample that cannot be rendered or saved is a warning event, never a failed run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import LogEvent, SampleEvent
from .pngtext import write_png

if TYPE_CHECKING:
    from ..jobs import Job

SAMPLES_DIR = "samples"


def sample_name(step: int, index: int, seed: int | None) -> str:
    return f"step{step:08d}_p{index:02d}_seed{seed if seed is not None else 'random'}.png"


def publish_sample(job: Job, image: Any, *, step: int, index: int, prompt: str, seed: int | None,
                   lora: str = "training state") -> Path:
    """Save one sample (PIL image or PNG bytes) with its text chunks and append its event."""
    path = Path(job.dir) / SAMPLES_DIR / sample_name(step, index, seed)
    written = write_png(path, image, {"prompt": prompt, "seed": seed, "step": step, "lora": lora,
                                      "strength_model": 1.0, "strength_clip": 1.0, "job": job.id})
    job.append_event(SampleEvent(path=str(written), step=step, index=index, prompt=prompt, seed=seed))
    return written


def sample_failed(job: Job, *, step: int, index: int | None, error: BaseException | str) -> None:
    """The warning a failed sample leaves (training goes on)."""
    what = f"sample {index} at step {step}" if index is not None else f"samples at step {step}"
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    job.append_event(LogEvent(level="warning", message=f"{what} could not be rendered ({text[:300]}); "
                                                      "training goes on without it"))


@dataclass(frozen=True)
class SampleRecord:
    step: int
    index: int
    prompt: str
    seed: int | None
    path: Path


def samples_of(job: Job) -> list[SampleRecord]:
    """Every sample the job's events announce whose file still exists (the last one per step and prompt)."""
    found: dict[tuple[int, int], SampleRecord] = {}
    for event in job.events():
        if event.get("type") != "sample":
            continue
        path = Path(str(event.get("path", "")))
        if not path.is_file():  # the job folder was moved or copied: the file keeps its name
            path = Path(job.dir) / SAMPLES_DIR / path.name
        if not path.is_file():
            continue
        try:
            record = SampleRecord(int(event["step"]), int(event["index"]), str(event["prompt"]),
                                  event.get("seed"), path)
        except (KeyError, TypeError, ValueError):
            continue
        found[(record.step, record.index)] = record
    return sorted(found.values(), key=lambda r: (r.step, r.index))
