"""Our replacement for DevServer's `BackendRouter._inject_lora_nodes(workflow, loras) -> workflow`.

Per-LoRA strength_model/strength_clip, CLIP rewired (the text encoders read the LoRA'd CLIP), UNET graphs,
availability and fit checks, idempotent (never a second chain). Trigger words travel from the injector to the
input-mapping wrapper inside the graph, in the injected loader's `_meta` (ComfyUI ignores `_meta`), so no state is
shared between concurrent requests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..comfy.preflight import check_fits, check_installed, installed_from_object_info, lora_nodes_in
from ..errors import LoraFileError, WorkflowError
from ..graph.api import NodeTypes
from ..graph.inject import inject_loras
from ..lora.report import LoraReport, inspect_lora
from ..lora.spec import LoraSpec
from ..paths import safe_join

log = logging.getLogger(__name__)

TRIGGER_META_KEY = "devserver_lora_trigger_words"


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
    """Our replacement for `BackendRouter._inject_lora_nodes`, configured once at app start.

    `loras_dir` lets it read the LoRA files (text-encoder keys, trigger words, the fit check); `arch` names the
    model the fit check judges against (None: the check cannot run, and the injector says so once).
    """

    loras_dir: Path | None = None
    object_info: Mapping[str, Any] | None = None
    arch: Any = None
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
                    hint="give ComfyUI's models/loras folder (or leave it out to skip the local file checks)",
                )
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.safetensors"))
        return None

    def trigger_words(self, spec: LoraSpec) -> list[str]:
        if spec.trigger_words:
            return list(spec.trigger_words)
        report = self._report(spec.name)
        return list(report.trigger_words) if report is not None else []

    def _check_fit(self, workflow: dict[str, Any]) -> None:
        if self.loras_dir is None or self.arch is None:
            missing = "no loras folder" if self.loras_dir is None else "no model (arch) named"
            self._warn_once(
                f"fit:{missing}",
                f"LoRA fit check skipped ({missing}): a LoRA that does not fit the model would render without effect",
            )
            return
        check_fits(workflow, self.loras_dir, self.arch)

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
        self._check_fit(out)
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
