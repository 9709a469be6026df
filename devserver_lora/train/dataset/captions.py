"""Captions: decoding, normalising, the trigger word, and a CLIP token-count estimate.

Token counting without a tokenizer download: CLIP's BPE first splits text with the
pattern  's|'t|'re|'ve|'m|'ll|'d|letters+|one digit|other non-space run  (lower-cased).
We do the same split, then estimate BPE pieces per chunk:
  * ASCII letter words: 1 piece up to 6 letters, else ceil(len / 4)  (CLIP's 49k vocabulary holds
    most common English words whole; rare long words split into ~3-5 letter pieces, so this
    over-counts common long words and is about right for rare ones);
  * words with non-ASCII letters (Yoruba tone marks, umlauts): ceil(utf8_bytes / 2), because byte-level
    BPE splits uncommon code points into one or two byte tokens;
  * each digit is its own chunk (1 piece); punctuation runs: 1 piece per character.
Plus 2 for the start and end tokens. CLIP reads 77 tokens; more are cut off. The estimate is
meant to err on the long side, so a caption we pass is very unlikely to be truncated.
"""

from __future__ import annotations

import math
import re

CLIP_MAX_TOKENS = 77
_CONTRACTIONS = r"'s|'t|'re|'ve|'m|'ll|'d"
_SPLIT = re.compile(_CONTRACTIONS + r"|[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)


class CaptionDecodeError(ValueError):
    """The caption file is not UTF-8."""


def decode_caption(raw: bytes) -> str:
    """UTF-8 (a BOM is allowed) -> one clean line; CaptionDecodeError if the bytes are not UTF-8."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaptionDecodeError(f"not UTF-8 (bad byte at offset {exc.start})") from exc
    return clean_caption(text)


def clean_caption(text: str) -> str:
    # Kohya reads only the first line of a caption file: fold every line into one.
    lines = [ln.strip().rstrip(",").strip() for ln in text.replace("\r", "\n").split("\n")]
    text = ", ".join(ln for ln in lines if ln)
    return re.sub(r"[ \t]+", " ", text).strip()


def has_trigger(caption: str, trigger: str) -> bool:
    pattern = r"(?<!\w)" + re.escape(trigger.strip().lower()) + r"(?!\w)"
    return re.search(pattern, caption.lower()) is not None


def add_trigger(caption: str, trigger: str | None) -> str:
    """Put the trigger first where it is missing (keep_tokens=1 then keeps it in place when shuffling)."""
    if not trigger:
        return caption
    if has_trigger(caption, trigger):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def estimate_clip_tokens(text: str) -> int:
    """Estimated CLIP token count including start and end tokens (see the module docstring)."""
    count = 2
    for chunk in _SPLIT.findall(text.lower()):
        if chunk.startswith("'") and len(chunk) <= 3:
            count += 1
        elif chunk[0].isalpha():
            if chunk.isascii():
                count += 1 if len(chunk) <= 6 else math.ceil(len(chunk) / 4)
            else:
                count += max(1, math.ceil(len(chunk.encode("utf-8")) / 2))
        elif chunk.isdigit():
            count += 1
        else:
            count += len(chunk)
    return count
