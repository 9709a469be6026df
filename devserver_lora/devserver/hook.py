"""The one call DevServer's app factory makes: `install_into_devserver(BackendRouter, ...)`.

At start-up it checks what a render will need (a broken LoRA config, or a loras folder that is not there, should
stop the app, not fail every student's request with an HTTP 500): the loras folder exists, every LoRA output config
is valid and renders through a ComfyUI chunk DevServer has. Then it replaces `BackendRouter._inject_lora_nodes`
with our injector and wraps `_apply_input_mappings` so the LoRAs' trigger words are merged into the Stage-2 prompt
(without repeating a trigger the LLM already wrote).

Which LoRAs reach a graph is DevServer's decision, and the plugin keeps it: `parameters['loras']` of the output
config; an interception config's `meta.loras` only when the output config has no `loras` of its own (DevServer's
pipeline executor fills a parameter from the interception side only if the output config lacks it). The plugin
never merges the two lists.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..comfy.preflight import check_fit_in_graph
from ..config.tree import SchemasTree
from ..errors import ConfigError, DevserverLoraError, Problem
from ..graph.inject import inject_loras
from ..graph.model import graph_models
from ..lora.triggers import merge_triggers
from ..paths import safe_join
from .injector import LoraInjector, triggers_in

log = logging.getLogger(__name__)
ROUTER_MODULE = "schemas.engine.backend_router"
LORAS_HINT = ("give the folder ComfyUI reads LoRAs from; in DevServer's layout that is SwarmUI's Models/loras "
              "(DevServer's config.LORA_OUTPUT_DIR)")


def check_lora_configs(schemas_dir: str | Path) -> list[str]:
    """Check every output config that carries LoRAs as DevServer would load it; returns their names.

    Configs without LoRAs are DevServer's business and are not judged (its tree holds audio, video and Diffusers
    configs we do not model). Raises ConfigError listing every problem of a LoRA config or of its chunk.
    """
    tree = SchemasTree.load(schemas_dir, own_chunks=False)
    problems = tree.lora_config_problems()
    if problems:
        raise ConfigError(f"LoRA output configs in {Path(schemas_dir) / 'configs' / 'output'} are invalid", problems)
    return sorted(tree.lora_configs())


def model_files(tree: SchemasTree) -> dict[str, str]:
    """Model file -> `meta.base_model`, from the chunks the LoRA configs render through (see `graph.model`)."""
    found: dict[str, str] = {}
    clashes: set[str] = set()
    for name in tree.lora_configs():
        resolved = tree.resolve(name)
        base = resolved.config.meta.get("base_model")
        if not isinstance(base, str) or not base:
            continue
        for model in graph_models(resolved.chunk.workflow).values():
            if model.file is None:
                continue
            if found.setdefault(model.file, base) != base:
                clashes.add(model.file)
    for file in clashes:
        log.warning("devserver-lora: LoRA configs give %s different meta.base_model values; its graphs are judged by "
                    "their loader alone", file)
        found.pop(file)
    return found


def lora_file_problems(tree: SchemasTree, loras_dir: Path) -> list[Problem]:
    """Each LoRA a LoRA config names that is not in `loras_dir`, or does not fit that config's model as its chunk
    wires it (`meta.base_model`; a config without one is judged by name only)."""
    problems: list[Problem] = []
    for name in sorted(tree.lora_configs()):
        resolved = tree.resolve(name)
        file = str(tree.config_files[name])
        base = resolved.config.meta.get("base_model")
        for spec in resolved.loras:
            path = safe_join(loras_dir, spec.name, what="LoRA name")
            if not path.is_file():
                problems.append(Problem(f"LoRA {spec.name} is not in {loras_dir}: renders of {name} are refused until "
                                        "it is installed", file=file, code="lora_missing",
                                        hint=f"copy it there (`train install JOB --loras-dir {loras_dir}`)"))
                continue
            if not isinstance(base, str):
                continue
            try:
                graph = inject_loras(resolved.chunk.workflow, [spec])
                node = next(k for k, n in graph.items() if (n.get("inputs") or {}).get("lora_name") == spec.name)
                check_fit_in_graph(graph, node, path, base)
            except DevserverLoraError as exc:
                problems.append(Problem(str(exc), file=file, code="lora_does_not_fit"))
    return problems


def install_into_devserver(
    backend_router_cls_or_instance: Any,
    *,
    schemas_dir: str | Path,
    loras_dir: str | Path,
    object_info: Mapping[str, Any] | None = None,
) -> LoraInjector:
    """Replace DevServer's LoRA injection with ours; returns the injector (also usable on its own).

    Call once from DevServer's app factory (`my_app.create_app`), e.g.
    `install_into_devserver(BackendRouter, schemas_dir=<devserver>/schemas, loras_dir=config.LORA_OUTPUT_DIR)`.
    Works on the class (every router) or on one instance. Idempotent: a second call replaces the first.
    """
    target = backend_router_cls_or_instance
    if not hasattr(target, "_inject_lora_nodes"):
        raise DevserverLoraError(
            f"{target!r} has no _inject_lora_nodes: this is not DevServer's BackendRouter (or its API changed)",
            hint=f"pass BackendRouter from {ROUTER_MODULE} (DevServer runs with devserver/ as its working directory)",
        )
    folder = Path(loras_dir)
    if not folder.is_dir():
        raise DevserverLoraError(f"the loras folder {folder} does not exist, so every LoRA render would fail",
                                 hint=LORAS_HINT)
    tree = SchemasTree.load(schemas_dir, own_chunks=False)
    problems: list[Problem] = tree.lora_config_problems()
    if problems:
        raise ConfigError(f"LoRA output configs in {Path(schemas_dir) / 'configs' / 'output'} are invalid", problems)
    for problem in lora_file_problems(tree, folder):
        log.warning("devserver-lora: %s", problem)
    injector = LoraInjector(folder, object_info, known_files=model_files(tree))
    is_class = isinstance(target, type)
    # DevServer's class (or instance) is not ours: read what it has, and our mark on an earlier patch, by name.
    found = getattr(target, "_apply_input_mappings", None)
    original_apply: Callable[..., Any] | None = getattr(found, "__devserver_lora_original__", found)

    def _inject_lora_nodes(self_or_wf: Any, *args: Any) -> dict[str, Any]:
        workflow, loras = args if is_class else (self_or_wf, *args)
        return injector(workflow, loras)

    def _apply_input_mappings(self_or_wf: Any, *args: Any) -> Any:
        assert original_apply is not None  # installed only where the router has one
        call: Callable[..., Any]
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
    log.info("devserver-lora: LoRA injection installed on %r (%d LoRA config(s), loras from %s)",
             target, len(tree.lora_configs()), folder)
    return injector
