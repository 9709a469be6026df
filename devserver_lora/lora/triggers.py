"""Merging LoRA trigger words into the Stage-2 prompt.

The LLM in Stage 2 often writes a trigger itself ("... in the cooked negatives style"); adding it
again weights it twice. So a trigger is added only when the prompt does not already contain it as
whole words, compared case-insensitively and after Unicode NFC normalisation (a Yorùbá word typed
with combining accents must match the same word typed with precomposed letters).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

__all__ = ["merge_triggers", "contains_trigger"]


def _norm(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def _pattern(trigger: str) -> re.Pattern[str]:
    # Whole words only ("cat" is not in "concatenate"); any run of whitespace inside a
    # multi-word trigger matches any other run, so line breaks from the LLM do not hide it.
    words = [re.escape(w) for w in trigger.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)")


def contains_trigger(prompt: str, trigger: str) -> bool:
    """True when `trigger` occurs in `prompt` as whole words, ignoring case, accents' encoding and spacing."""
    trig = _norm(trigger).strip()
    if not trig:
        return True
    return _pattern(trig).search(_norm(prompt)) is not None


def merge_triggers(
    prompt: str, triggers: Sequence[str], *, position: Literal["prefix", "suffix"] = "prefix"
) -> str:
    """Add each trigger the prompt lacks, comma-joined, before (default) or after the prompt.

    Triggers already present anywhere in the prompt (whole words, case-insensitive) are not repeated,
    nor are duplicates within `triggers`; their order is kept. The result is stable: merging again
    returns the same text.
    """
    if position not in ("prefix", "suffix"):
        raise ValueError(f"position must be 'prefix' or 'suffix', not {position!r}")
    if isinstance(triggers, str):
        # A bare string would otherwise be split into letters.
        triggers = [triggers]
    missing: list[str] = []
    seen: set[str] = set()
    for raw in triggers:
        trigger = " ".join(unicodedata.normalize("NFC", raw).split())
        key = _norm(trigger)
        if not trigger or key in seen:
            continue
        seen.add(key)
        if not contains_trigger(prompt, trigger):
            missing.append(trigger)
    if not missing:
        return prompt
    body = prompt.strip().strip(",").strip()
    parts = missing + [body] if position == "prefix" else [body] + missing
    return ", ".join(p for p in parts if p)
