"""LoRA injection into ComfyUI API-format graphs (work in progress: signatures are final)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .lora_spec import LoraSpec


def inject_loras(
    workflow: Mapping[str, Any],
    loras: Sequence[LoraSpec],
    *,
    lora_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a copy of `workflow` with a LoraLoader chain per model source; the input is never mutated.

    `lora_info` maps a LoRA name to its `loras.LoraReport` (or a bool "has text-encoder keys");
    a LoRA known to have no text-encoder keys gets LoraLoaderModelOnly.
    Raises `WorkflowError` when the graph has no model source, or several and the spec names no `target`.
    """
    raise NotImplementedError("inject_loras is being written (issue 3)")
