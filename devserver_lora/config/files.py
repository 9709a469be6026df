"""Reading and writing DevServer JSON files: bounded, with line/column errors and JSON paths in every problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import safe_json
from ..errors import ConfigError, Problem
from ..paths import atomic_write_json, check_simple_name
from .models import OutputChunk, OutputConfig

# The project's own schemas folder (JSON Schemas, shipped configs and chunks), in a source checkout.
SHIPPED_SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


def pydantic_problems(exc: ValidationError, *, file: str | None) -> list[Problem]:
    """Turn pydantic's errors into Problems with a JSON path (`$.lora[0].name`) and a clean message."""
    problems = []
    for error in exc.errors():
        path = "$"
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if error["type"] not in ("missing",) and not isinstance(value, (dict, list)):
            message += f" (got {value!r})"
        problems.append(Problem(message=message, file=file, path=path, code=error["type"]))
    return problems


def read_json_file(path: str | Path) -> Any:
    """Parse a JSON file, raising ConfigError with the line and column of a syntax error."""
    p = Path(path)
    try:
        # Refuse before reading: a FIFO would block, a huge file would fill memory.
        if p.exists() and not p.is_file():
            raise ConfigError(f"{p} is not a regular file", hint="give the path of a .json file")
        if p.stat().st_size > safe_json.MAX_JSON_BYTES:
            raise ConfigError(f"{p} is {p.stat().st_size} bytes, over the {safe_json.MAX_JSON_BYTES} byte limit",
                              hint="this is not an output config or chunk")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return safe_json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{p} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            hint="fix the syntax (a trailing comma or a missing quote is the usual cause)",
        ) from None


def parse_output_config(data: Any, *, file: str | None = None) -> OutputConfig:
    try:
        return OutputConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{file or 'output config'} is not a valid output config", pydantic_problems(exc, file=file)) from None


def parse_output_chunk(data: Any, *, file: str | None = None) -> OutputChunk:
    try:
        return OutputChunk.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{file or 'output chunk'} is not a valid output chunk", pydantic_problems(exc, file=file)) from None


def load_output_config(path: str | Path) -> OutputConfig:
    return parse_output_config(read_json_file(path), file=str(path))


def load_output_chunk(path: str | Path) -> OutputChunk:
    return parse_output_chunk(read_json_file(path), file=str(path))


def write_output_config(config: OutputConfig, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `config` as DevServer JSON (LoRAs in both spellings), atomically; refuse to replace a file."""
    target = Path(path)
    check_simple_name(target.stem, what="output config name")
    if target.suffix != ".json":
        raise ConfigError(f"output config file {target.name!r} must end with .json")
    if target.exists() and not overwrite:
        raise ConfigError(
            f"output config {target} already exists",
            hint="choose another name; an existing config is never replaced silently",
        )
    return atomic_write_json(target, config.to_json_dict())
