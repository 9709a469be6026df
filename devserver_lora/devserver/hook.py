"""The one call DevServer's app factory makes: `install_into_devserver(BackendRouter, ...)`.

It checks every LoRA output config at start-up (a broken config should stop the app, not a student's request),
replaces `BackendRouter._inject_lora_nodes` with our injector, and wraps `_apply_input_mappings` so the LoRAs'
trigger words are merged into the Stage-2 prompt (without repeating a trigger the LLM already wrote).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config.files import load_output_config, read_json_file
from ..errors import ConfigError, DevserverLoraError, Problem
from ..lora.triggers import merge_triggers
from .injector import LoraInjector, triggers_in

log = logging.getLogger(__name__)


def check_lora_configs(schemas_dir: str | Path) -> list[str]:
    """Parse every output config in `schemas_dir` that carries LoRAs; returns their names.

    A broken LoRA config should stop the app start, not a student's request. Configs without LoRAs are
    DevServer's business and are not judged here (its tree holds audio/video configs we do not model).
    """
    folder = Path(schemas_dir) / "configs" / "output"
    if not folder.is_dir():
        raise ConfigError(f"{folder} does not exist", hint="pass DevServer's devserver/schemas folder as schemas_dir")
    names: list[str] = []
    problems = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = read_json_file(path)
        except ConfigError as exc:
            problems.append(Problem(message=exc.message, file=str(path)))
            continue
        params = data.get("parameters") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not ("lora" in data or (isinstance(params, dict) and params.get("loras"))):
            continue
        try:
            load_output_config(path)
            names.append(path.stem)
        except ConfigError as exc:
            problems += exc.problems or [Problem(message=exc.message, file=str(path))]
    if problems:
        raise ConfigError(f"LoRA output configs in {folder} are invalid", problems)
    return names


def install_into_devserver(
    backend_router_cls_or_instance: Any,
    *,
    schemas_dir: str | Path,
    loras_dir: str | Path | None = None,
    object_info: Mapping[str, Any] | None = None,
    arch: Any = None,
) -> LoraInjector:
    """Replace DevServer's LoRA injection with ours; returns the injector (also usable on its own).

    Call once from DevServer's app factory: `install_into_devserver(BackendRouter, schemas_dir=...)`.
    Works on the class (every router) or on one instance. Idempotent: a second call replaces the first.
    """
    target = backend_router_cls_or_instance
    if not hasattr(target, "_inject_lora_nodes"):
        raise DevserverLoraError(
            f"{target!r} has no _inject_lora_nodes: this is not DevServer's BackendRouter (or its API changed)",
            hint="pass BackendRouter from schemas.engine.backend_router (DevServer runs with devserver/ as its working directory)",
        )
    check_lora_configs(schemas_dir)
    injector = LoraInjector(Path(loras_dir) if loras_dir else None, object_info, arch)
    is_class = isinstance(target, type)
    original_apply = getattr(target, "_apply_input_mappings", None)
    original_apply = getattr(original_apply, "__devserver_lora_original__", original_apply)

    def _inject_lora_nodes(self_or_wf: Any, *args: Any) -> dict[str, Any]:
        workflow, loras = args if is_class else (self_or_wf, *args)
        return injector(workflow, loras)

    def _apply_input_mappings(self_or_wf: Any, *args: Any) -> Any:
        if is_class:
            workflow, mappings, input_data = args
            call = functools.partial(original_apply, self_or_wf)
        else:
            workflow, mappings, input_data = (self_or_wf, *args)
            call = original_apply
        words = triggers_in(workflow)
        if words and isinstance(input_data.get("prompt"), str):
            input_data = {**input_data, "prompt": merge_triggers(input_data["prompt"], words)}
        return call(workflow, mappings, input_data)

    _inject_lora_nodes.__devserver_lora__ = injector  # type: ignore[attr-defined]
    target._inject_lora_nodes = _inject_lora_nodes
    if original_apply is not None:
        _apply_input_mappings.__devserver_lora_original__ = original_apply  # type: ignore[attr-defined]
        target._apply_input_mappings = _apply_input_mappings
    log.info("devserver-lora: LoRA injection installed on %r", target)
    return injector
