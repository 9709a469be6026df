"""Wiring into the AI4ArtsEd DevServer: our LoRA injector in place of its own, and a Stage-4 runner.

(a) `install_into_devserver(BackendRouter, schemas_dir=...)`, called once from DevServer's app factory, replaces
    `BackendRouter._inject_lora_nodes(self, workflow, loras) -> workflow` (DevServer's signature) with ours:
    per-LoRA strength_model/strength_clip, CLIP rewiring (the text encoders read the LoRA'd CLIP), UNET graphs,
    availability and key checks, idempotent (never a second chain). It also wraps
    `_apply_input_mappings(self, workflow, mappings, input_data)` so the LoRAs' trigger words are merged into the
    Stage-2 prompt (without repeating a trigger the LLM already wrote). Trigger words travel from the injector to
    that wrapper inside the graph, in the injected loader's `_meta` (ComfyUI ignores `_meta`), so no state is
    shared between concurrent requests.
(b) `Stage4Runner`: (output config name, Stage-2 prompt, seed, overrides) -> input mappings applied as DevServer
    does -> injection -> submission -> image bytes + metadata. It consumes `parameters['loras']` (sets it to [])
    so that nothing downstream injects them again.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .comfy.client import ComfyClient, EventCallback, Timeouts
from .comfy.preflight import check_installed, check_key_coverage, lora_nodes_in
from .comfy.sync import run_sync
from .config import OutputChunk, OutputConfig, SchemasTree, load_output_config, read_json_file
from .errors import ConfigError, DevserverLoraError, LoraFileError, Problem, WorkflowError
from .graph import NodeTypes
from .lora_spec import LoraSpec
from .paths import safe_join
from .triggers import merge_triggers
from .workflow import inject_loras

log = logging.getLogger(__name__)

TRIGGER_META_KEY = "devserver_lora_trigger_words"
# DevServer's output-config parameters (upper case) and the chunk input_mappings keys they fill.
PARAMETER_KEYS = {
    "WIDTH": "width",
    "HEIGHT": "height",
    "STEPS": "steps",
    "CFG": "cfg",
    "SAMPLER": "sampler_name",
    "SCHEDULER": "scheduler",
    "SEED": "seed",
    "NEGATIVE_PROMPT": "negative_prompt",
}
PREVIOUS_OUTPUT = "{{PREVIOUS_OUTPUT}}"


def to_specs(loras: Sequence[Any]) -> list[LoraSpec]:
    """DevServer's `[{name, strength}]` (or ours, or LoraSpec objects) -> LoraSpec, with a teaching error."""
    specs: list[LoraSpec] = []
    for i, item in enumerate(loras or []):
        if isinstance(item, LoraSpec):
            specs.append(item)
            continue
        try:
            specs.append(LoraSpec.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise WorkflowError(
                f"LoRA #{i + 1} in parameters['loras'] is invalid at {where}: {first['msg']} (got {item!r})",
                hint='write it as {"name": "file.safetensors", "strength": 0.8} or with strength_model/strength_clip',
            ) from exc
    # The same file listed twice (config + interception meta) is applied once, first spelling wins.
    seen: set[str] = set()
    return [s for s in specs if not (s.name in seen or seen.add(s.name))]


@dataclass
class LoraInjector:
    """Our replacement for `BackendRouter._inject_lora_nodes`, configured once at app start."""

    loras_dir: Path | None = None
    object_info: Mapping[str, Any] | None = None
    arch: Any = None  # for key coverage (devserver_lora.loras.predict_not_loaded); None skips that check
    _reports: dict[str, Any] = field(default_factory=dict, repr=False)

    def _report(self, name: str) -> Any:
        """The LoRA file's header report (text-encoder keys, trigger words) when we can read the file."""
        if self.loras_dir is None:
            return None
        if name not in self._reports:
            path = safe_join(self.loras_dir, name, what="LoRA name")
            report = None
            if path.is_file():
                try:
                    from .loras import inspect_lora  # lazy: reads safetensors headers

                    report = inspect_lora(path)
                except NotImplementedError:
                    report = None
            self._reports[name] = report
        return self._reports[name]

    def installed(self) -> list[str] | None:
        """The LoRAs ComfyUI offers, from object_info (preferred) or the local loras folder; None if unknown."""
        if self.object_info is not None:
            try:
                return [str(x) for x in self.object_info["LoraLoader"]["input"]["required"]["lora_name"][0]]
            except (KeyError, IndexError, TypeError):
                return None
        if self.loras_dir is not None:
            root = Path(self.loras_dir)
            if not root.is_dir():
                raise LoraFileError(
                    f"the loras folder {root} does not exist",
                    hint="give ComfyUI's models/loras folder (or leave it out to skip the local file checks)",
                )
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.safetensors"))
        return None

    def trigger_words(self, spec: LoraSpec) -> list[str]:
        if spec.trigger_words:
            return list(spec.trigger_words)
        report = self._report(spec.name)
        return list(getattr(report, "trigger_words", None) or [])

    def __call__(self, workflow: Mapping[str, Any], loras: Sequence[Any]) -> dict[str, Any]:
        specs = to_specs(loras)
        if not specs:
            return dict(workflow)
        lora_info = {s.name: r for s in specs if (r := self._report(s.name)) is not None}
        types = NodeTypes.from_object_info(self.object_info) if self.object_info is not None else None
        out = inject_loras(workflow, specs, lora_info=lora_info or None, types=types)
        installed = self.installed()
        if installed is not None:
            check_installed(out, installed)
        if self.loras_dir is not None and self.arch is not None:
            check_key_coverage(out, self.loras_dir, self.arch)
        by_name = {s.name: self.trigger_words(s) for s in specs}
        for node_id, _, name in lora_nodes_in(out):
            words = by_name.get(name)
            if words:
                meta = out[node_id].setdefault("_meta", {})
                meta[TRIGGER_META_KEY] = words
        return out


def triggers_in(workflow: Mapping[str, Any]) -> list[str]:
    """Trigger words the injector left on LoRA loaders of `workflow`, in chain order, without repeats."""
    words: list[str] = []
    for node in workflow.values():
        meta = node.get("_meta") if isinstance(node, Mapping) else None
        for word in (meta or {}).get(TRIGGER_META_KEY) or []:
            if word not in words:
                words.append(word)
    return words


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
            hint="pass devserver.schemas.engine.backend_router.BackendRouter",
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


# --- Stage 4 -----------------------------------------------------------------------------------------------------


def _coerce(value: Any, current: Any, *, key: str) -> Any:
    """Numbers arrive as strings after DevServer's placeholder substitution ("1024", "5.5"): match the field."""
    if not isinstance(value, str) or isinstance(current, bool) or not isinstance(current, int | float):
        return value
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(
            f"input mapping {key!r}: {value!r} is not a number, but the workflow field holds {current!r}",
            hint="fix the value in the output config parameters or the override",
        ) from None
    if isinstance(current, int):
        if not number.is_integer():
            raise ConfigError(f"input mapping {key!r}: {value!r} is not a whole number", hint="use e.g. 1024")
        return int(number)
    return number


def apply_input_mappings(
    workflow: dict[str, Any], chunk: OutputChunk, input_data: Mapping[str, Any], *, rng: random.Random | None = None
) -> int | None:
    """Fill `workflow` in place as DevServer's `_apply_input_mappings` does; returns the seed used (if any).

    Per key: value from input_data, else the first target's `default`, else the prompt when the source is
    {{PREVIOUS_OUTPUT}}; `seed: "random"` becomes a random int; the value goes to EVERY target of the key.
    Unlike DevServer we turn numeric strings into numbers and refuse targets whose node is not in the graph.
    """
    seed: int | None = None
    for key in chunk.input_mappings:
        targets = chunk.mapping_targets(key)
        value = input_data.get(key)
        if value is None and targets:
            value = targets[0].default
        if value is None and targets and targets[0].source == PREVIOUS_OUTPUT:
            value = input_data.get("prompt", "")
        if key == "seed":
            if value == "random" or value == -1 or value == "-1":
                value = (rng or random.SystemRandom()).randint(0, 2**32 - 1)
            elif value is not None:
                value = _coerce(value, 0, key=key)
            seed = value
        if value is None:
            continue
        for target in targets:
            node = workflow.get(target.node_id)
            if not isinstance(node, dict):
                raise ConfigError(
                    f"input mapping {key!r} targets node {target.node_id!r}, which is not in chunk {chunk.name!r}",
                    hint="fix node_id in the chunk's input_mappings",
                )
            path = target.field.split(".")
            holder = node
            for part in path[:-1]:
                holder = holder.setdefault(part, {})
            holder[path[-1]] = _coerce(value, holder.get(path[-1]), key=key)
    return seed


@dataclass
class Stage4Result:
    images: list[bytes]
    prompt_id: str
    seed: int | None
    loras: list[LoraSpec]
    prompt: str
    workflow: dict[str, Any] = field(repr=False)
    filenames: list[str] = field(default_factory=list)


class Stage4Runner:
    """Render an output config the way DevServer's Stage 4 does, with our LoRA handling and client."""

    def __init__(
        self,
        schemas: str | Path | SchemasTree,
        comfy_url: str | None,
        *,
        loras_dir: str | Path | None = None,
        arch: Any = None,
        timeouts: Timeouts | None = None,
        trigger_position: str = "prefix",
    ) -> None:
        """`comfy_url` None: only `prepare` (build the graph offline), as `devserver-lora inject` does."""
        self.tree = schemas if isinstance(schemas, SchemasTree) else SchemasTree.load(schemas)
        self.comfy_url = comfy_url
        self.trigger_position = trigger_position
        self.loras_dir = Path(loras_dir) if loras_dir else None
        self.arch = arch
        self.timeouts = timeouts or Timeouts()

    def arch_for(self, config: OutputConfig) -> Any:
        """The model the key check uses: the one given, else the config's `meta.base_model` (e.g. sd35_large)."""
        return self.arch if self.arch is not None else config.meta.get("base_model")

    def prepare(
        self,
        config_name: str,
        prompt: str,
        *,
        seed: int | str | None = None,
        overrides: Mapping[str, Any] | None = None,
        installed: list[str] | None = None,
        rng: random.Random | None = None,
    ) -> tuple[dict[str, Any], int | None, list[LoraSpec], str, OutputChunk]:
        """Everything before submission: (graph, seed, loras applied, final prompt, chunk). No network."""
        resolved = self.tree.resolve(config_name)
        chunk = resolved.chunk
        if chunk.backend_type != "comfyui":
            raise ConfigError(
                f"output config {config_name!r} renders through chunk {chunk.name!r} (backend {chunk.backend_type!r}), "
                "which ignores LoRAs",
                hint="set parameters.OUTPUT_CHUNK to a ComfyUI chunk such as 'output_image_sd35_large'",
            )
        params: dict[str, Any] = resolved.config.parameters.model_dump(mode="json", exclude_none=True)
        params.update(overrides or {})
        # Consume the LoRA list: it is applied here, and must not be applied again downstream.
        extra = params.pop("loras", None) or []
        params["loras"] = []
        specs = to_specs([*resolved.loras, *extra])
        injector = LoraInjector(self.loras_dir, None, self.arch_for(resolved.config))
        workflow = injector(chunk.workflow, specs) if specs else dict(chunk.workflow)
        if installed is not None:
            check_installed(workflow, installed)
        final_prompt = (
            merge_triggers(prompt, triggers_in(workflow), position=self.trigger_position) if specs else prompt
        )
        input_data: dict[str, Any] = {"prompt": final_prompt}
        for key, value in params.items():
            input_data[PARAMETER_KEYS.get(key, key)] = value
        if seed is not None:
            input_data["seed"] = seed
        chosen = apply_input_mappings(workflow, chunk, input_data, rng=rng)
        return workflow, chosen, specs, final_prompt, chunk

    async def arun(
        self,
        config_name: str,
        prompt: str,
        *,
        seed: int | str | None = None,
        overrides: Mapping[str, Any] | None = None,
        on_event: EventCallback | None = None,
        on_prepared: Callable[[dict[str, Any]], None] | None = None,
    ) -> Stage4Result:
        """Prepare, submit and wait. `on_prepared(graph)` sees the final graph before it is submitted."""
        if self.comfy_url is None:
            raise DevserverLoraError("no ComfyUI URL given: this runner can only prepare graphs",
                                     hint="pass the server's URL, e.g. http://127.0.0.1:8188")
        async with ComfyClient(self.comfy_url, timeouts=self.timeouts) as client:
            workflow, chosen, specs, final_prompt, chunk = self.prepare(
                config_name, prompt, seed=seed, overrides=overrides
            )
            if on_prepared is not None:
                on_prepared(workflow)
            output_node = chunk.output_mapping.node_id if chunk.output_mapping else None
            arch = self.arch_for(self.tree.resolve(config_name).config)
            result = await client.run(
                workflow, on_event=on_event, output_node=output_node, loras_dir=self.loras_dir, arch=arch
            )
        if not result.images:
            raise DevserverLoraError(
                f"ComfyUI finished prompt {result.prompt_id} but node {output_node} saved no image",
                hint="check the chunk's output_mapping.node_id points at its SaveImage node",
            )
        return Stage4Result(
            images=[img.data for img in result.images],
            prompt_id=result.prompt_id,
            seed=chosen,
            loras=specs,
            prompt=final_prompt,
            workflow=workflow,
            filenames=[img.ref.filename for img in result.images],
        )

    def run(self, config_name: str, prompt: str, **kwargs: Any) -> Stage4Result:
        """Blocking `arun`, safe from Flask/Waitress worker threads."""
        return run_sync(lambda: self.arun(config_name, prompt, **kwargs))
