"""Render an output config the way DevServer's Stage 4 does, with our LoRA handling and client.

`Stage4Runner`: (output config name, Stage-2 prompt, seed, overrides) -> input mappings applied as DevServer
does -> injection -> submission -> image bytes + metadata. It consumes `parameters['loras']` (sets it to [])
so that nothing downstream injects them again.

DevServer's facts it follows: a random seed is drawn in 0..2^31-1 (the generation route's range); the LoRAs are the
output config's, and an interception config's `meta.loras` count only when the output config has no `loras` of its
own (DevServer's pipeline executor: "Skipped 'loras' - already in parameters"), never both.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..comfy.client import ComfyClient, EventCallback, Timeouts
from ..comfy.preflight import check_installed
from ..comfy.sync import run_sync
from ..config.models import OutputChunk, OutputConfig
from ..config.tree import SchemasTree
from ..errors import ConfigError, DevserverLoraError
from ..lora.spec import LoraSpec
from ..lora.triggers import merge_triggers
from .injector import LoraInjector, to_specs, triggers_in

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
# DevServer's generation route draws `random.randint(0, 2147483647)` when no seed is given.
SEED_MAX = 2**31 - 1


def check_overrides(overrides: Mapping[str, Any], chunk: OutputChunk) -> Mapping[str, Any]:
    """Refuse an override that fills nothing in `chunk` (a typo would otherwise be ignored in silence).

    Accepted: DevServer's parameter names (WIDTH, STEPS, SEED, ...) whose mapping the chunk has, the chunk's own
    mapping keys (width, denoise, ...), and `loras` (LoRAs an interception config passes on).
    """
    accepted = {k for k, v in PARAMETER_KEYS.items() if v in chunk.input_mappings} | set(chunk.input_mappings)
    unknown = sorted(k for k in overrides if k != "loras" and k not in accepted)
    if unknown:
        upper = sorted(k for k in accepted if k.isupper())
        lower = sorted(k for k in accepted if not k.isupper() and k not in PARAMETER_KEYS.values())
        raise ConfigError(
            f"chunk {chunk.name!r} has nothing to fill with {', '.join(unknown)}",
            hint=f"use one of {', '.join(upper + lower)} (e.g. --set WIDTH=512)",
        )
    return overrides


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
    {{PREVIOUS_OUTPUT}}; `seed: "random"` becomes a random int in DevServer's range (0..2^31-1); the value goes to
    EVERY target of the key.
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
                value = (rng or random.SystemRandom()).randint(0, SEED_MAX)
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
        arch: str | None = None,
        timeouts: Timeouts | None = None,
        trigger_position: Literal["prefix", "suffix"] = "prefix",
    ) -> None:
        """`comfy_url` None: only `prepare` (build the graph offline), as `devserver-lora inject` does."""
        self.tree = schemas if isinstance(schemas, SchemasTree) else SchemasTree.load(schemas)
        self.comfy_url = comfy_url
        self.trigger_position = trigger_position
        self.loras_dir = Path(loras_dir) if loras_dir else None
        self.arch = arch
        self.timeouts = timeouts or Timeouts()

    def arch_for(self, config: OutputConfig) -> str | None:
        """The model the key check uses: the one given, else the config's `meta.base_model` (e.g. sd35_large)."""
        base = self.arch if self.arch is not None else config.meta.get("base_model")
        return base if isinstance(base, str) else None

    def fit_check_gap(self, config_name: str) -> str | None:
        """Why the LoRA fit check cannot run for `config_name` (None when it runs, or there is no LoRA)."""
        resolved = self.tree.resolve(config_name)
        if not resolved.loras:
            return None
        if self.loras_dir is None:
            return ("the LoRA fit check did not run: ComfyUI's loras folder was not given (--loras-dir), so a LoRA "
                    "that does not fit the model would render without its effect")
        if self.arch_for(resolved.config) is None:
            return ("the LoRA fit check did not run: the config names no meta.base_model and no --arch was given, "
                    "so a LoRA that does not fit the model would render without its effect")
        return None

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
        given = dict(check_overrides(overrides or {}, chunk))
        interception = given.pop("loras", None) or []
        params.update(given)
        # DevServer's rule: the output config's LoRAs (any `loras` it has, even none) win over the interception's.
        own = bool(resolved.loras) or "loras" in params
        specs = to_specs(resolved.loras if own else interception)
        params["loras"] = []  # consumed: applied here, and never again downstream
        base_model = self.arch_for(resolved.config)
        injector = LoraInjector(self.loras_dir, strict=True)
        workflow = injector(chunk.workflow, specs, base_model=base_model)
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
