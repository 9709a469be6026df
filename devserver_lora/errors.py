"""The one exception hierarchy of devserver-lora.

Every error carries a message that says what happened and, where we know it, a
`hint` that says what to do. Catch `DevserverLoraError` to catch all of ours.

    DevserverLoraError
    ├── UnsafePathError          a name that would escape its folder
    ├── ConfigError              output configs, chunks, schemas trees
    ├── WorkflowError            ComfyUI graph surgery and offline validation
    │   └── GraphValidationError
    ├── LoraFileError            a .safetensors LoRA we cannot read or trust
    ├── ComfyError               talking to a ComfyUI server
    │   ├── ComfyUnreachable
    │   ├── ComfyValidationError (HTTP 400 from /prompt)
    │   ├── ComfyExecutionError
    │   ├── ComfyInterrupted
    │   ├── ComfyTimeout
    │   └── ComfyProtocolError   malformed answers
    └── TrainingError
        ├── DatasetError
        ├── PlanError
        ├── BackendError         Kohya or native backend failed (with diagnosis)
        └── JobError
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DevserverLoraError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  -> {self.hint}"
        return self.message


class UnsafePathError(DevserverLoraError):
    """A name that becomes a path is absolute, climbs with '..', or is otherwise hostile."""


@dataclass(frozen=True)
class Problem:
    """One finding: where (file and JSON path), what is wrong, and what is allowed."""

    message: str
    file: str | None = None
    path: str = "$"
    hint: str | None = None
    code: str = "invalid"
    severity: str = "error"  # "error" blocks, "warning" does not
    extra: dict = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        text = f"{where}{self.path}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def as_dict(self) -> dict:
        out: dict[str, object] = {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }
        if self.extra:
            out["extra"] = self.extra
        return out


class _ProblemsError(DevserverLoraError):
    """An error that carries every problem found, not only the first."""

    def __init__(self, message: str, problems: list[Problem] | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems: list[Problem] = list(problems or [])

    def __str__(self) -> str:
        lines = [super().__str__()]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ConfigError(_ProblemsError):
    """An output config, output chunk or DevServer schemas tree is invalid."""


class WorkflowError(DevserverLoraError):
    """A ComfyUI API-format graph cannot take the requested LoRAs."""


class GraphValidationError(_ProblemsError, WorkflowError):
    """Offline validation of a graph against object_info found problems (ComfyUI's own error types)."""


class LoraFileError(DevserverLoraError):
    """A LoRA file is missing, corrupt, unsafe (pickle) or does not fit the model."""


class ComfyError(DevserverLoraError):
    """Something went wrong talking to ComfyUI."""

    def __init__(self, message: str, *, hint: str | None = None, prompt_id: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.prompt_id = prompt_id


class ComfyUnreachable(ComfyError):
    """The server did not answer (not running, wrong URL, or it died)."""


class ComfyValidationError(ComfyError):
    """POST /prompt answered 400: the graph was refused before it ran."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        error: dict | None = None,
        node_errors: dict | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.error = error or {}
        self.node_errors = node_errors or {}


class ComfyExecutionError(ComfyError):
    """A node raised while the prompt ran."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        prompt_id: str | None = None,
        node_id: str | None = None,
        node_type: str | None = None,
        exception_type: str | None = None,
        traceback: list[str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, prompt_id=prompt_id)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.traceback = traceback or []


class ComfyInterrupted(ComfyError):
    """The prompt was interrupted before it finished."""


class ComfyTimeout(ComfyError):
    """No result within the overall time limit, or no sign of life within the idle limit."""


class ComfyProtocolError(ComfyError):
    """The server answered something we cannot parse."""


class TrainingError(DevserverLoraError):
    """Base for everything in `python -m devserver_lora.train`."""


class DatasetError(TrainingError):
    """A dataset cannot be imported or fails a blocking check."""

    def __init__(self, message: str, *, hint: str | None = None, problems: list[Problem] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems: list[Problem] = list(problems or [])


class PlanError(_ProblemsError, TrainingError):
    """Hyperparameters are invalid, or the training cannot fit the GPU (`problems` lists each bad setting)."""


class BackendError(TrainingError):
    """A training backend (Kohya or native) failed; `diagnosis` names the cause when we know it."""

    def __init__(self, message: str, *, hint: str | None = None, diagnosis: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.diagnosis = diagnosis


class JobError(TrainingError):
    """A training job is unknown, in the wrong state, or its folder is damaged."""


class GpuBusyError(JobError):
    """Another job of the same job store is training: one GPU trains one job at a time (queue this one)."""
