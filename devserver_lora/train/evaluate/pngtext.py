"""Images saved alone, with what made them in their PNG text chunks.

Keys (all strings): `devserver_lora.prompt`, `devserver_lora.seed`, `devserver_lora.strength_model`,
`devserver_lora.strength_clip`, `devserver_lora.lora` (the LoRA file, or "none"), `devserver_lora.job`, and for
training samples `devserver_lora.step`. Text chunks already in the image (ComfyUI's `prompt` and `workflow`: the
graph it ran) are kept. Pixels are never changed: PNG is lossless, so an image re-saved here compares equal.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...paths import atomic_write_bytes

PREFIX = "devserver_lora."


def png_bytes(image: Any, fields: Mapping[str, object]) -> bytes:
    """PNG bytes of `image` (PIL image or PNG/JPEG bytes) with `fields` added as `devserver_lora.*` text chunks."""
    from PIL import Image, PngImagePlugin

    img = Image.open(io.BytesIO(image)) if isinstance(image, bytes | bytearray) else image
    info = PngImagePlugin.PngInfo()
    for key, value in (getattr(img, "text", None) or {}).items():  # only PIL's PNG images have .text
        if not key.startswith(PREFIX):
            info.add_text(key, value)
    for key, value in fields.items():
        info.add_text(PREFIX + key, "none" if value is None else str(value))
    out = io.BytesIO()
    img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def write_png(path: str | os.PathLike[str], image: Any, fields: Mapping[str, object]) -> Path:
    """Write the image with its text chunks atomically (replacing a file of the same name)."""
    data = png_bytes(image, fields)
    return atomic_write_bytes(path, data)


def read_fields(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `devserver_lora.*` text chunks of a PNG, without the prefix."""
    from PIL import Image

    with Image.open(path) as img:
        text = dict(getattr(img, "text", None) or {})  # only PIL's PNG images have .text
    return {k[len(PREFIX):]: v for k, v in text.items() if k.startswith(PREFIX)}
