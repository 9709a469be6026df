"""A new LoRA output config: the name DevServer can route as an image, and the config itself."""

from __future__ import annotations

from ..errors import ConfigError
from ..lora.spec import LoraSpec
from ..paths import check_simple_name
from .files import SHIPPED_SCHEMAS_DIR, load_output_config, parse_output_config
from .models import NON_IMAGE_NAME_MARKERS, OutputConfig, check_image_config_name


def make_lora_output_config(
    name: str,
    loras: list[LoraSpec],
    *,
    base: OutputConfig | None = None,
    title_en: str | None = None,
    title_de: str | None = None,
    description_en: str | None = None,
    description_de: str | None = None,
    output_chunk: str | None = None,
    base_model: str | None = None,
) -> OutputConfig:
    """A new output config `name` that renders through the ComfyUI SD3.5 chunk with `loras` applied.

    `base` defaults to the shipped `sd35_large_yoruba` config, whose DevServer fields
    (parameters, media preferences, meta) are what a LoRA config on SD3.5 Large needs.
    `output_chunk` replaces the base's `parameters.OUTPUT_CHUNK` (e.g. the triple-CLIP chunk
    that LoRAs with text-encoder keys need).
    """
    check_simple_name(name, what="output config name")
    marker = check_image_config_name(name)
    if marker:
        raise ConfigError(
            f"output config name {name!r} contains {marker!r}, so DevServer would not route it as an image",
            hint=f"pick a name without any of {', '.join(NON_IMAGE_NAME_MARKERS)}",
        )
    if not loras:
        raise ConfigError("a LoRA output config needs at least one LoRA")
    if base is None:
        base = load_output_config(SHIPPED_SCHEMAS_DIR / "configs" / "output" / "sd35_large_yoruba.json")
    data = base.to_json_dict()
    data.pop("lora", None)
    data.get("parameters", {}).pop("loras", None)
    if title_en or title_de:
        data["name"] = {"en": title_en or title_de, "de": title_de or title_en}
    if description_en or description_de:
        data["description"] = {"en": description_en or description_de, "de": description_de or description_en}
    if output_chunk is not None:
        data.setdefault("parameters", {})["OUTPUT_CHUNK"] = output_chunk
    if base_model is not None:
        data.setdefault("meta", {})["base_model"] = base_model
    data["lora"] = [s.to_lora_dict() for s in loras]
    return parse_output_config(data, file=name)
