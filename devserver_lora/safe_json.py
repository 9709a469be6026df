"""`json.loads` for input we do not control: bounded in size and nesting.

Configs, dataset cards, metadata.jsonl lines, safetensors headers and everything a ComfyUI server answers are
hostile until checked. Plain `json.loads` on `[[[[...]]]]` raises RecursionError (not a JSONDecodeError), which
every caller's `except json.JSONDecodeError` misses, so the user saw a traceback instead of an error that says
which file is broken. Data nested just below the interpreter's limit would then crash the code that walks it.
Both limits raise `json.JSONDecodeError`, so callers keep their one `except` and their own error message.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "loads"]

# Our largest legitimate input is a live server's /object_info (a few MB with many custom nodes).
MAX_JSON_BYTES = 64 * 1024 * 1024
# Real documents nest under 12 levels (object_info: node/input/required/name/[type, {options}]).
MAX_JSON_DEPTH = 64


def _depth_exceeds(obj: Any, limit: int) -> bool:
    # Iterative, so that checking a deep document cannot itself recurse too deep.
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return False


def loads(data: str | bytes | bytearray, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text; `json.JSONDecodeError` (position 0) when it is over `max_bytes` or nests over `max_depth`."""
    if len(data) > max_bytes:
        head = data[:64] if isinstance(data, str) else bytes(data[:64]).decode("utf-8", "replace")
        raise json.JSONDecodeError(f"document is {len(data)} bytes, over the limit of {max_bytes}", head, 0)
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    try:
        value = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError(f"document nests deeper than {max_depth} levels", text[:64], 0) from None
    if isinstance(value, dict | list) and _depth_exceeds(value, max_depth):
        raise json.JSONDecodeError(f"document nests deeper than {max_depth} levels", text[:64], 0)
    return value
