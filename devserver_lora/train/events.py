"""Typed job events: one JSON object per line in a job's `events.jsonl`.

Both backends (Kohya and native) write these; `status` reads them back. Each event
has a `type` discriminator and `ts` (unix time). A NaN loss is stored as
`loss: null` plus `loss_is_nan: true`, because JSON has no NaN.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from ..errors import JobError

JobState = Literal["created", "running", "done", "failed", "cancelled"]
LogLevel = Literal["debug", "info", "warning", "error"]
JOB_STATES: tuple[str, ...] = ("created", "running", "done", "failed", "cancelled")


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    ts: float = Field(default_factory=time.time)


class StateEvent(_Event):
    type: Literal["state"] = "state"
    state: JobState
    message: str = ""


class ProgressEvent(_Event):
    type: Literal["progress"] = "progress"
    step: int = Field(ge=0)
    total_steps: int = Field(ge=0)
    epoch: int | None = None
    total_epochs: int | None = None
    loss: float | None = None
    loss_is_nan: bool = False
    eta_s: float | None = None
    it_per_s: float | None = None
    lr: float | None = None  # the learning rate of this step, where the backend knows it (native)

    @model_validator(mode="before")
    @classmethod
    def _nan_loss(cls, data: Any) -> Any:
        # JSON cannot carry NaN; keep the fact that training diverged instead of dropping it.
        if isinstance(data, dict):
            loss = data.get("loss")
            if isinstance(loss, str) and loss.strip().lower() == "nan":
                loss = float("nan")
            if isinstance(loss, float) and (math.isnan(loss) or math.isinf(loss)):
                data = {**data, "loss": None, "loss_is_nan": True}
        return data

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


class CheckpointEvent(_Event):
    type: Literal["checkpoint"] = "checkpoint"
    path: str
    step: int | None = None
    epoch: int | None = None


class LogEvent(_Event):
    type: Literal["log"] = "log"
    level: LogLevel = "info"
    message: str

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        # Accept Python logging's spellings ("WARNING", "warn", "CRITICAL") from trainer output.
        if isinstance(value, str):
            v = value.strip().lower()
            return {"warn": "warning", "critical": "error", "fatal": "error"}.get(v, v)
        return value


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    diagnosis: str | None = None
    message: str
    hint: str | None = None


class SampleEvent(_Event):
    """A sample image rendered during training (native backend in-process, Kohya by sd-scripts' own sampler).

    `path` is the PNG in the job's `samples/` folder; `index` is the prompt's place in the job's sample prompts.
    """

    type: Literal["sample"] = "sample"
    path: str
    step: int = Field(ge=0)
    index: int = Field(ge=0)
    prompt: str
    seed: int | None = None


class DoneEvent(_Event):
    type: Literal["done"] = "done"
    lora_path: str
    steps: int | None = None


Event = Annotated[
    StateEvent | ProgressEvent | CheckpointEvent | SampleEvent | LogEvent | ErrorEvent | DoneEvent,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: dict[str, Any]) -> Event:
    """Turn one decoded JSON line into its typed event; JobError if the type is unknown or fields are wrong."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        kind = data.get("type") if isinstance(data, dict) else None
        raise JobError(
            f"malformed job event of type {kind!r}: {exc.errors()[0]['msg']}",
            hint="known types: state, progress, checkpoint, sample, log, error, done",
        ) from exc


def event_to_dict(event: Event | dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready dict of an event (validating plain dicts first)."""
    if isinstance(event, dict):
        event = parse_event(event)
    return event.model_dump(mode="json")
