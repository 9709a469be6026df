"""Our replacement for DevServer's `BackendRouter._inject_lora_nodes(workflow, loras) -> workflow`.

Per-LoRA strength_model/strength_clip, CLIP rewired (the text encoders read the LoRA'd CLIP), UNET graphs,
availability and fit checks, idempotent (never a second chain). Each graph is judged by ITS model (`graph.model`:
the config's `meta.base_model`, the loader's model file, its CLIP loader's type), never by one model named for all:
a LoRA of another model family is left out of that graph (DevServer's Qwen, FLUX.2 or Wan graphs get no SD3.5
LoRA; upstream skips every graph without a CheckpointLoaderSimple), and a LoRA of the right family whose keys do not
fit is refused. Trigger words travel from the injector to the input-mapping wrapper inside the graph, in the
injected loader's `_meta` (ComfyUI ignores `_meta`), so no state is shared between concurrent requests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..comfy.preflight import (
    check_fit_in_graph,
    check_installed,
    installed_from_object_info,
    lora_nodes_in,
    model_mismatch,
)
from ..errors import LoraFileError, WorkflowError
from ..graph.api import NodeTypes, copy_api_graph
from ..graph.inject import inject_loras
from ..graph.model import GraphModel, graph_models
from ..lora.report import LoraReport, inspect_lora
from ..lora.spec import LoraSpec
from ..paths import safe_join

log = logging.getLogger(__name__)

TRIGGER_META_KEY = "devserver_lora_trigger_words"
# What a LoRA entry may carry: our fields plus DevServer's own `strength`.
KNOWN_LORA_KEYS = frozenset(LoraSpec.model_fields) | {"strength"}


def to_specs(loras: Sequence[Any], *, on_unknown_keys: Callable[[str, str], None] | None = None) -> list[LoraSpec]:
    """DevServer's `[{name, strength}]` (or ours, or LoraSpec objects) -> LoraSpec, with a teaching error.

    Strict by default. With `on_unknown_keys(key, message)`, keys neither DevServer nor we read (DevServer itself
    reads only `name` and `strength`) are reported through it and left in the caller's entry, not read.
    """
    specs: list[LoraSpec] = []
    for i, item in enumerate(loras or []):
        if isinstance(item, LoraSpec):
            specs.append(item)
            continue
        if on_unknown_keys is not None and isinstance(item, Mapping):
            extra = sorted(str(k) for k in item if k not in KNOWN_LORA_KEYS)
            if extra:
                on_unknown_keys(",".join(extra), f"LoRA entries carry keys it does not read: {', '.join(extra)} "
                                "(ignored; DevServer itself reads only name and strength)")
                item = {k: v for k, v in item.items() if k in KNOWN_LORA_KEYS}
        try:
            specs.append(LoraSpec.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise WorkflowError(
                f"LoRA #{i + 1} in parameters['loras'] is invalid at {where}: {first['msg']} (got {item!r})",
                hint='write it as {"name": "file.safetensors", "strength": 0.8} or with strength_model/strength_clip',
            ) from exc
    # The same file listed twice is applied once, first spelling wins.
    unique: dict[str, LoraSpec] = {}
    for spec in specs:
        unique.setdefault(spec.name, spec)
    return list(unique.values())


def _source_of(workflow: Mapping[str, Any], node_id: str, sources: Mapping[str, GraphModel]) -> GraphModel | None:
    """The model source an injected loader's MODEL input comes from (walking back through LoRA loaders)."""
    seen: set[str] = set()
    link = (workflow.get(node_id) or {}).get("inputs", {}).get("model")
    while isinstance(link, list) and len(link) == 2 and str(link[0]) not in seen:
        src = str(link[0])
        if src in sources:
            return sources[src]
        seen.add(src)
        link = (workflow.get(src) or {}).get("inputs", {}).get("model")
    return None


@dataclass
class LoraInjector:
    """Our replacement for `BackendRouter._inject_lora_nodes`, configured once at app start.

    `loras_dir` lets it read the LoRA files (text-encoder keys, trigger words, the model they were trained on, the
    fit check). `known_files` maps model files to the model they are (`meta.base_model` of the LoRA configs whose
    chunks load them; see `graph.model`). `strict=True` refuses, instead of leaving out, a LoRA that does not
    belong in the graph (what a command-line render wants; DevServer's router gets the lenient default, as
    interception configs' LoRAs reach every output config).
    """

    loras_dir: Path | None = None
    object_info: Mapping[str, Any] | None = None
    known_files: Mapping[str, str] = field(default_factory=dict)
    strict: bool = False
    # name -> ((mtime_ns, size), report): a file replaced on disk is read again; a missing file is not remembered.
    _reports: dict[str, tuple[tuple[int, int], LoraReport]] = field(default_factory=dict, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)

    def _report(self, name: str) -> LoraReport | None:
        """The LoRA file's header report when the file is in `loras_dir`; None when there is no such file."""
        if self.loras_dir is None:
            return None
        path = safe_join(self.loras_dir, name, what="LoRA name")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._reports.get(name)
        if cached is None or cached[0] != stamp:
            cached = (stamp, inspect_lora(path))
            self._reports[name] = cached
        return cached[1]

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("devserver-lora: %s", message)

    def installed(self) -> list[str] | None:
        """The LoRAs ComfyUI offers, from object_info (preferred) or the local loras folder; None if unknown."""
        if self.object_info is not None:
            return installed_from_object_info(self.object_info)
        if self.loras_dir is not None:
            root = Path(self.loras_dir)
            if not root.is_dir():
                raise LoraFileError(
                    f"the loras folder {root} does not exist",
                    hint="give the folder ComfyUI reads LoRAs from (DevServer: SwarmUI/Models/loras)",
                )
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.safetensors"))
        return None

    def trigger_words(self, spec: LoraSpec) -> list[str]:
        if spec.trigger_words:
            return list(spec.trigger_words)
        report = self._report(spec.name)
        return list(report.trigger_words) if report is not None else []

    def _leave_out(self, spec: LoraSpec, reason: str) -> None:
        if self.strict:
            raise LoraFileError(reason, hint="choose a LoRA trained for this model, or the output config of the model "
                                             "it was trained for")
        self._warn_once(f"skip:{spec.name}:{reason}", f"{reason}; the graph is rendered without it")

    def _select(self, workflow: Mapping[str, Any], specs: list[LoraSpec], models: Mapping[str, GraphModel],
                reports: Mapping[str, LoraReport]) -> list[LoraSpec]:
        """The specs that belong in this graph; the others are left out (logged) or refused (strict)."""
        if not models:
            for spec in specs:
                self._leave_out(spec, f"the graph has no model source (checkpoint or diffusion model loader) for LoRA "
                                      f"{spec.name!r}")
            return []
        keep = []
        for spec in specs:
            model = models.get(spec.target) if spec.target else (next(iter(models.values())) if len(models) == 1
                                                                 else None)
            reason = model_mismatch(spec.name, reports.get(spec.name), model)
            if reason is None:
                keep.append(spec)
            else:
                self._leave_out(spec, reason)
        return keep

    def _check_fit(self, out: dict[str, Any], names: set[str], models: Mapping[str, GraphModel]) -> None:
        for node_id, _, name in lora_nodes_in(out):
            if name not in names:
                continue  # a LoRA the chunk itself carries is the chunk's business
            model = _source_of(out, node_id, models)
            report = self._report(name)
            if report is None:
                where = f"its file is not in {self.loras_dir}" if self.loras_dir else "no loras folder was given"
                self._warn_once(f"fit:nofile:{name}", f"LoRA fit check skipped for {name!r}: {where}, so a LoRA "
                                "that does not fit would render without effect")
            elif model is None or model.arch is None:
                what = model.label() if model else "an unknown model"
                self._warn_once(f"fit:nomodel:{name}:{what}", f"LoRA fit check skipped for {name!r}: the graph renders "
                                f"{what}, which no LoRA config's meta.base_model names, so a LoRA that does not fit "
                                "would render without effect")
            else:
                check_fit_in_graph(out, node_id, report, model.arch)

    def __call__(self, workflow: Mapping[str, Any], loras: Sequence[Any], *, base_model: str | None = None
                 ) -> dict[str, Any]:
        """A copy of `workflow` with `loras` applied (the input is never changed). `base_model`: the output
        config's `meta.base_model`, when the caller knows which config this graph renders."""
        specs = to_specs(loras, on_unknown_keys=lambda key, msg: self._warn_once(f"keys:{key}", msg))
        if not specs:
            return copy_api_graph(workflow)
        types = NodeTypes.from_object_info(self.object_info) if self.object_info is not None else None
        models = graph_models(workflow, base_model=base_model, known_files=self.known_files, types=types)
        reports = {s.name: r for s in specs if (r := self._report(s.name)) is not None}
        keep = self._select(workflow, specs, models, reports)
        if not keep:
            return copy_api_graph(workflow)
        out = inject_loras(workflow, keep, lora_info=reports or None, types=types)
        names = {s.name for s in keep}
        installed = self.installed()
        if installed is not None:
            check_installed({k: v for k, v in out.items() if (v.get("inputs") or {}).get("lora_name") in names},
                            installed)
        self._check_fit(out, names, models)
        by_name = {s.name: self.trigger_words(s) for s in keep}
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
