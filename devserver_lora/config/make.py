"""A new LoRA output config, written from a neutral template and what is known about THIS LoRA.

Nothing is copied from another config: a student's LoRA must not inherit another LoRA's texts, tags or provenance.
The template gives DevServer what an SD3.5 output config needs (every placeholder its `output_image` proxy chunk
fills: WIDTH, HEIGHT, STEPS, CFG, SAMPLER, SCHEDULER, SEED, NEGATIVE_PROMPT; `meta.backend_type: comfyui`) and
neutral framing in DevServer's interface languages (en, de). The LoRA's own texts (title, description, tags, from
its dataset card) go under the language the card says they are in, and nowhere else: no English text under `de`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..lora.spec import LoraSpec
from ..paths import check_simple_name
from .files import parse_output_config
from .models import NON_IMAGE_NAME_MARKERS, SD35_CHUNK, OutputConfig, non_image_marker

UI_LANGUAGES = ("en", "de")
WRITTEN_BY = "devserver-lora (config.make)"
_NAME = {"en": "{model} + LoRA “{title}”", "de": "{model} + LoRA „{title}“"}
_DESCRIPTION = {
    "en": "{model} through ComfyUI with the LoRA “{title}”. What it was trained on, and who may use it, is recorded "
          "with the LoRA (meta.provenance of this config).",
    "de": "{model} über ComfyUI mit der LoRA „{title}“. Worauf sie trainiert wurde und wer sie nutzen darf, ist mit "
          "der LoRA festgehalten (meta.provenance dieser Konfiguration).",
}
_CATEGORY = {"en": "Image Generation", "de": "Bildgenerierung"}
_TAGS = {"en": ["image", "lora", "comfyui"], "de": ["bild", "lora", "comfyui"]}
# The placeholders DevServer's `output_image` proxy chunk substitutes; one left out reaches ComfyUI as "{{WIDTH}}".
SD35_PARAMETERS: dict[str, Any] = {
    "WIDTH": 1024, "HEIGHT": 1024, "STEPS": 25, "CFG": 5.5, "SAMPLER": "euler", "SCHEDULER": "normal",
    "SEED": "random", "NEGATIVE_PROMPT": "blurry, low quality, watermark, text",
}


def make_lora_output_config(
    name: str,
    loras: Sequence[LoraSpec],
    *,
    title: str,
    model_label: str = "SD 3.5 Large",
    base_model: str = "sd35_large",
    output_chunk: str = SD35_CHUNK,
    language: str | None = None,
    description: str | None = None,
    tags: Sequence[str] = (),
    provenance: Mapping[str, Any] | None = None,
) -> OutputConfig:
    """A new output config `name` that renders `loras` through the ComfyUI chunk `output_chunk`.

    `title`, `description` and `tags` are the LoRA's own (its dataset card's); `language` is the language they are
    written in. The description and tags appear only under that language; DevServer's interface languages without
    them get the neutral template text. `provenance` (source, rights holder, licence, consent, ...) is kept in
    `meta.provenance` as given.
    """
    check_simple_name(name, what="output config name")
    marker = non_image_marker(name)
    if marker:
        raise ConfigError(
            f"output config name {name!r} contains {marker!r}, so DevServer would not route it as an image",
            hint=f"pick a name without any of {', '.join(NON_IMAGE_NAME_MARKERS)}",
        )
    if not loras:
        raise ConfigError("a LoRA output config needs at least one LoRA")
    fill = {"model": model_label, "title": title.strip()}
    texts = {lang: text.format(**fill) for lang, text in _DESCRIPTION.items()}
    tag_lists = {lang: list(words) for lang, words in _TAGS.items()}
    if language and description:
        texts[language] = description.strip()
    if language and tags:
        tag_lists[language] = [*tag_lists.get(language, []), *(t for t in tags if t not in tag_lists.get(language, []))]
    data: dict[str, Any] = {
        "pipeline": "single_text_media_generation",
        "name": {lang: text.format(**fill) for lang, text in _NAME.items()},
        "description": texts,
        "category": dict(_CATEGORY),
        "parameters": {"OUTPUT_CHUNK": output_chunk, **SD35_PARAMETERS},
        "media_preferences": {"default_output": "image", "supported_types": ["image"]},
        "meta": {
            "stage": "output",
            "backend": "comfyui",
            "backend_type": "comfyui",
            "base_model": base_model,
            "written_by": WRITTEN_BY,
            "provenance": dict(provenance or {}),
        },
        "display": {"icon": "🧩", "color": "#607D8B", "category": "image_generation"},
        "tags": tag_lists,
        "lora": [s.to_lora_dict() for s in loras],
    }
    return parse_output_config(data, file=name)
