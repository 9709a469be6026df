"""The training-backend contract and how a backend is chosen.

A backend runs one job to completion in the calling process: it appends progress,
checkpoint, log, error and done events to the job, writes checkpoints into
`job.outputs_dir` under Kohya's names (`{name}-{epoch:06d}.safetensors`,
`{name}-step{N:08d}.safetensors`, final `{name}.safetensors`), and returns the final
LoRA path or raises BackendError with a `diagnosis`. Job state (running/done/failed)
is the runner's business, so the same backend works attached or detached.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..errors import BackendError, Problem

if TYPE_CHECKING:  # the backends are chosen here; the job store loads with them
    from .jobs import Job
    from .settings import Settings

BackendChoice = Literal["kohya", "native", "auto"]
BACKEND_NAMES: tuple[str, ...] = ("kohya", "native", "auto")


@runtime_checkable
class Backend(Protocol):
    name: str

    def preflight(self, job: Job) -> list[Problem]: ...

    def run(self, job: Job, *, resume: bool = False, stop: threading.Event | None = None) -> Path: ...


def kohya_available(settings: Settings | None, kohya_dir: Path | str | None = None) -> bool:
    """True when a Kohya install is configured and has its checkout and venv (no subprocess started)."""
    from .kohya.venv import find_kohya

    try:
        find_kohya(kohya_dir or (settings.kohya_dir if settings else None))
    except BackendError:
        return False
    return True


def auto_backend(settings: Settings | None, kohya_dir: Path | str | None = None) -> Literal["kohya", "native"]:
    """What `auto` means here: Kohya if a valid Kohya install is configured, else native."""
    return "kohya" if kohya_available(settings, kohya_dir) else "native"


def get_backend(name: str, settings: Settings | None, **options: Any) -> Backend:
    """`kohya`, `native`, or `auto` (Kohya if a valid Kohya install is configured, else native).

    Options go to the backend's constructor (Kohya: kohya_dir, num_processes, grace_s, ...; native: num_processes,
    grace_s, ...).
    """
    if name not in BACKEND_NAMES:
        raise BackendError(f"unknown backend {name!r}", hint=f"choose one of: {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        name = auto_backend(settings, options.get("kohya_dir"))
    if name == "kohya":
        from .kohya.backend import KohyaBackend

        return KohyaBackend(settings, **options)
    try:  # imported lazily because it pulls in torch
        from .native.backend import NativeBackend
    except ImportError as exc:
        raise BackendError(
            f"the native backend cannot be loaded: {exc}",
            hint="install the training extra (`pip install devserver-lora[train]`) or use --backend kohya",
            diagnosis="native_missing",
        ) from exc
    native_options = {k: v for k, v in options.items() if k != "kohya_dir"}
    return NativeBackend(settings, **native_options)
