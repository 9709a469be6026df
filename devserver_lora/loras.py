"""LoRA files: safetensors header, format, architecture, trigger words, key coverage (signatures final)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel


class LoraReport(BaseModel):
    """What a LoRA file holds, read from its header alone."""

    path: str
    keys: list[str] = []
    metadata: dict[str, str] = {}
    trigger_words: list[str] = []


ARCHS: dict[str, Any] = {}


def inspect_lora(path: str | os.PathLike[str]) -> LoraReport:
    """Read the header of a .safetensors LoRA (no tensors loaded) and describe it."""
    raise NotImplementedError("inspect_lora is being written (issue 3)")


def predict_not_loaded(path_or_report: str | os.PathLike[str] | LoraReport, arch: Any) -> list[str]:
    """The 'lora key not loaded: ...' and 'NOT LOADED ...' lines ComfyUI would log for this LoRA on `arch`."""
    raise NotImplementedError("predict_not_loaded is being written (issue 3)")


def lora_has_text_encoder(report: LoraReport) -> bool:
    """True when the LoRA carries text-encoder keys (so LoraLoader, not LoraLoaderModelOnly)."""
    raise NotImplementedError("lora_has_text_encoder is being written (issue 3)")
