"""Parse sd-scripts' console output (recorded in tests/fixtures/kohya/run_log*.txt) into typed items.

tqdm redraws its bar with `\\r` and no newline, so a "line" ends at either `\\r` or `\\n`;
a bar may even share a line with the next log record when tqdm's final redraw is
followed by a rich log line. Only the bar prefixed `steps:` is the training bar (the
latent and text-encoder caching bars have no prefix or `read caption:`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_STEPS = re.compile(
    r"steps:\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)\s*"
    r"\[(?P<elapsed>[^<\]]*)<(?P<remaining>[^,\]]*)"
    r"(?:,\s*(?P<rate>\?|[\d.]+)\s*(?P<unit>it/s|s/it))?"
    r"(?:,\s*avr_loss=(?P<loss>[^\],\s]+))?[^\]]*\]"
)
_EPOCH = re.compile(r"^\s*epoch (?P<epoch>\d+)/(?P<total>\d+)\s*$")
_CHECKPOINT = re.compile(r"saving checkpoint: (?P<path>\S.*?)\s*$")
_MODEL_SAVED = re.compile(r"\bmodel saved\.")
_TOTAL_STEPS = re.compile(r"total optimization steps / .*?:\s*(?P<total>\d+)")
_NUM_EPOCHS = re.compile(r"num epochs / .*?:\s*(?P<total>\d+)")
_RESUMED = re.compile(r"load train state from (?P<path>.+?): \{'current_epoch': (?P<epoch>\d+), 'current_step': (?P<step>\d+)\}")


@dataclass(frozen=True)
class StepLine:
    step: int
    total: int
    elapsed_s: float | None
    eta_s: float | None
    it_per_s: float | None
    loss: float | None  # float('nan') when sd-scripts printed avr_loss=nan


@dataclass(frozen=True)
class EpochLine:
    epoch: int
    total: int


@dataclass(frozen=True)
class CheckpointLine:
    path: str


@dataclass(frozen=True)
class ModelSavedLine:
    pass


@dataclass(frozen=True)
class TotalsLine:
    total_steps: int | None = None
    total_epochs: int | None = None


@dataclass(frozen=True)
class ResumedLine:
    epoch: int
    step: int


Parsed = StepLine | EpochLine | CheckpointLine | ModelSavedLine | TotalsLine | ResumedLine


def parse_duration(text: str) -> float | None:
    """tqdm's `MM:SS` or `H:MM:SS` (hours grow past 24, tqdm has no days); None for `?` or anything else."""
    parts = text.strip().split(":")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return float(seconds)


def _loss(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def parse_line(line: str) -> Parsed | None:
    """One piece of output (between `\\r`/`\\n`) to what it means for training, or None."""
    if "steps:" in line:
        m = _STEPS.search(line)
        if m:
            rate = m["rate"]
            it_per_s = None
            if rate and rate != "?":
                r = float(rate)
                it_per_s = r if m["unit"] == "it/s" else (1.0 / r if r > 0 else None)
            return StepLine(
                step=int(m["step"]),
                total=int(m["total"]),
                elapsed_s=parse_duration(m["elapsed"]),
                eta_s=parse_duration(m["remaining"]),
                it_per_s=it_per_s,
                loss=_loss(m["loss"]),
            )
    if line.startswith("saving checkpoint:") or "saving checkpoint: " in line:
        m = _CHECKPOINT.search(line)
        if m:
            return CheckpointLine(m["path"])
    if "epoch " in line:
        m = _EPOCH.match(line)
        if m:
            return EpochLine(int(m["epoch"]), int(m["total"]))
    if "model saved." in line and _MODEL_SAVED.search(line):
        return ModelSavedLine()
    if "optimization steps" in line:
        m = _TOTAL_STEPS.search(line)
        if m:
            return TotalsLine(total_steps=int(m["total"]))
    if "num epochs" in line:
        m = _NUM_EPOCHS.search(line)
        if m:
            return TotalsLine(total_epochs=int(m["total"]))
    if "load train state from" in line:
        m = _RESUMED.search(line)
        if m:
            return ResumedLine(epoch=int(m["epoch"]), step=int(m["step"]))
    return None


class LineSplitter:
    """Cut a stream into lines at `\\r` or `\\n`, keeping an unfinished tail for the next chunk."""

    def __init__(self) -> None:
        self._tail = ""

    def feed(self, text: str) -> list[str]:
        data = self._tail + text
        parts = re.split(r"\r\n|\r|\n", data)
        self._tail = parts.pop()
        return [p for p in parts if p]

    def flush(self) -> list[str]:
        tail, self._tail = self._tail, ""
        return [tail] if tail else []


def is_nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)


def parse_text(text: str) -> list[Parsed]:
    """Every meaningful item in a whole recorded log (tests, benchmarks)."""
    splitter = LineSplitter()
    items = []
    for line in splitter.feed(text) + splitter.flush():
        item = parse_line(line)
        if item is not None:
            items.append(item)
    return items
