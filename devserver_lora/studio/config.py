"""What a Studio instance needs to know: where things live, who is asking, and its limits.

One `StudioConfig` per mounted blueprint (DevServer) or standalone app. The job store is the training package's own
(`train/jobs.py`) at `settings.jobs_dir`, so a job made on the terminal and one made on the page are the same kind of
thing in the same folder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train.settings import Settings, load_settings

UserFn = Callable[[], "str | None"]
TeacherFn = Callable[[], bool]

STUDIO_DIR = "studio"
DATASETS_DIR = "datasets"
STAGING_DIR = ".staging"
# DevServer's ComfyUI (studio.md §2: it frees VRAM with POST :7821/free).
DEVSERVER_COMFYUI_URL = "http://127.0.0.1:7821"


@dataclass(frozen=True)
class Limits:
    """Upload limits: a request above them is refused (413/400) before anything lands in the data folder."""

    max_upload_bytes: int = 1024 * 1024 * 1024
    max_files: int = 400
    max_zip_members: int = 2000
    max_zip_bytes: int = 4 * 1024 * 1024 * 1024


@dataclass
class StudioConfig:
    settings: Settings
    user: UserFn | None = None  # DevServer's session user; None: standalone (X-Studio-User header)
    teachers: frozenset[str] = frozenset()
    # The host's own check, per request, that the asker is a teacher (DevServer: its settings login). A name in
    # `teachers` is trusted as given; this is the check to use where names are typed in (DevServer has no accounts).
    teacher: TeacherFn | None = None
    loras_dir: Path | None = None
    schemas_dir: Path | None = None
    comfyui_url: str = DEVSERVER_COMFYUI_URL
    limits: Limits = field(default_factory=Limits)
    python: str = field(default_factory=lambda: sys.executable)
    queue_poll_s: float = 2.0  # how often the one-GPU queue looks for a finished run (0: only when asked)
    sse_poll_s: float = 0.5
    list_max_age_s: float = 0.5  # jobs-list polls this close together share one scan of the job store
    cancel_grace_s: float = 30.0
    sse_max_s: float = 3600.0  # an SSE response ends after this; the browser reconnects with Last-Event-ID
    detect_gpu: bool = True
    preflight: bool = True  # False: start runs without the backend's setup check, as `run --no-preflight`
    devserver_routes: bool = True
    # The dataset card DevServer's own training page cannot ask for (it has no card form): the admin's, for every
    # upload through /api/training/start. None: that route refuses and says how to set it.
    devserver_card: dict[str, Any] | None = None
    clear_vram_timeout_s: float = 30.0
    # Settings for runs from DevServer's page (it offers none): make_plan overrides on top of preset fotostudio.
    devserver_overrides: dict[str, Any] = field(default_factory=dict)
    # One base checkpoint for native training (written into each job's model.json), instead of the standard file
    # names looked up in settings.models_dir.
    model_checkpoint: Path | None = None

    @property
    def mounted(self) -> bool:
        return self.user is not None

    @property
    def data_dir(self) -> Path:
        return self.settings.home

    @property
    def studio_dir(self) -> Path:
        return self.settings.home / STUDIO_DIR

    @property
    def datasets_dir(self) -> Path:
        return self.studio_dir / DATASETS_DIR

    @property
    def staging_dir(self) -> Path:
        return self.studio_dir / STAGING_DIR

    @property
    def jobs_dir(self) -> Path:
        return self.settings.jobs_dir


def make_config(
    *,
    data_dir: str | Path | None = None,
    jobs_dir: str | Path | None = None,
    loras_dir: str | Path | None = None,
    schemas_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    user: UserFn | None = None,
    teachers: Iterable[str] = (),
    **options: object,
) -> StudioConfig:
    """A config from the same precedence as the CLI: given values, then the environment, then `<home>/settings.json`.

    `data_dir` is the CLI's home (DEVSERVER_LORA_HOME): the Studio and `python -m devserver_lora.train` then share
    one job store without further setup."""
    settings = load_settings(
        home=str(data_dir) if data_dir is not None else None,
        jobs_dir=str(jobs_dir) if jobs_dir is not None else None,
        models_dir=str(models_dir) if models_dir is not None else None,
        comfyui_loras_dir=str(loras_dir) if loras_dir is not None else None,
        devserver_schemas_dir=str(schemas_dir) if schemas_dir is not None else None,
    )
    config = StudioConfig(
        settings=settings,
        user=user,
        teachers=frozenset(teachers),
        loras_dir=settings.comfyui_loras_dir,
        schemas_dir=settings.devserver_schemas_dir,
        **options,  # type: ignore[arg-type]
    )
    for folder in (config.studio_dir, config.datasets_dir, config.staging_dir, config.jobs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return config
