"""Where training things live: jobs, the Kohya checkout, ComfyUI's LoRA folder, DevServer schemas, base models.

Precedence (highest first): explicit overrides (CLI flags) > environment variables >
`<home>/settings.json` > defaults. `home` itself comes from an override, then
`DEVSERVER_LORA_HOME`, then `~/.local/share/devserver-lora`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .. import safe_json
from ..errors import TrainingError

ENV_VARS: dict[str, str] = {
    "home": "DEVSERVER_LORA_HOME",
    "kohya_dir": "KOHYA_DIR",
    "comfyui_loras_dir": "COMFYUI_LORAS_DIR",
    "devserver_schemas_dir": "DEVSERVER_SCHEMAS_DIR",
    "models_dir": "DEVSERVER_LORA_MODELS",
    "jobs_dir": "DEVSERVER_LORA_JOBS",
}


class Settings(BaseModel):
    """Resolved locations. Optional ones are None when not configured; callers say what to set."""

    model_config = ConfigDict(extra="forbid")

    home: Path
    jobs_dir: Path
    kohya_dir: Path | None = None
    comfyui_loras_dir: Path | None = None
    devserver_schemas_dir: Path | None = None
    models_dir: Path | None = None


def default_home() -> Path:
    return Path("~/.local/share/devserver-lora").expanduser()


def _read_settings_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = safe_json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(
            f"cannot read settings file {path}: {exc}", hint="fix or delete it; it must be a JSON object"
        ) from exc
    if not isinstance(data, dict):
        raise TrainingError(f"settings file {path} must hold a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise TrainingError(
            f"settings file {path} has unknown keys {unknown}",
            hint=f"known keys: {sorted(Settings.model_fields)}",
        )
    return data


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from overrides (None values ignored), environment and `home/settings.json`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        raise TypeError(f"unknown settings {unknown}")
    env = {k: os.environ[v] for k, v in ENV_VARS.items() if os.environ.get(v)}
    home = Path(given.get("home") or env.get("home") or default_home()).expanduser()
    values: dict[str, Any] = {}
    values.update(_read_settings_file(home / "settings.json"))
    values.update(env)
    values.update(given)
    values["home"] = home
    values.setdefault("jobs_dir", home / "jobs")
    for key, val in list(values.items()):
        if isinstance(val, str | Path):
            # Absolute now: the detached worker runs in the job folder and gets these through runner_settings.json,
            # where a relative "kohya" or "-jobs" would name something else (or read as an option).
            values[key] = Path(val).expanduser().absolute()
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise TrainingError(f"invalid settings: {exc}") from exc
