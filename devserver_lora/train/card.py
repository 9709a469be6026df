"""The dataset card: who made these images, who may use them, and who approved training on them.

Datasets here are often cultural heritage collected with students, so a card is
required before a plan is made or a job runs. It travels into the LoRA's
safetensors metadata (`card.to_metadata()`, string values only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import safe_json
from ..errors import DatasetError, Problem
from ..paths import atomic_write_json

Consent = Literal["yes", "no", "not_applicable"]
METADATA_PREFIX = "devserver_lora.card."
CARD_FILE = "card.json"

_CONSENT_ALIASES = {
    "yes": "yes",
    "ja": "yes",
    "true": "yes",
    "no": "no",
    "nein": "no",
    "false": "no",
    "not_applicable": "not_applicable",
    "not applicable": "not_applicable",
    "n/a": "not_applicable",
    "na": "not_applicable",
    "none": "not_applicable",
}


class ImageRights(BaseModel):
    """Source and rights holder of one image, where they differ from the set's."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    rights_holder: str | None = None
    licence: str | None = None


class DatasetCard(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=4000)
    source: str = Field(min_length=1, description="where the images come from (museum, own photos, archive, ...)")
    rights_holder: str = Field(min_length=1, description="who holds the rights to the images")
    licence: str = Field(
        min_length=1,
        validation_alias=AliasChoices("licence", "license"),
        description="e.g. CC-BY-4.0, 'own work', 'with permission'")
    consent: Consent = Field(description="consent of people depicted: yes / no / not_applicable (no people)")
    cultural_context: str = Field(min_length=1, description="what the images show and where they come from")
    approved_by: str = Field(min_length=1, description="who approved this use (community, teacher, curator)")
    language: str | None = Field(
        None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
        description="language of title, description and tags (BCP 47: de, en, yo, ...); an output config shows them "
        "under this language only")
    tags: list[str] = Field(default_factory=list, max_length=30, description="keywords, in the card's language")
    per_image: dict[str, ImageRights] = Field(default_factory=dict)

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_list(cls, value: object) -> object:
        if isinstance(value, str):  # the --tags flag: "adire, indigo"
            value = value.split(",")
        if isinstance(value, list):  # blank entries dropped; anything not a string is left for pydantic to refuse
            return [t.strip() if isinstance(t, str) else t for t in value if not isinstance(t, str) or t.strip()]
        return value

    @field_validator("title", "description", "source", "rights_holder", "licence", "cultural_context", "approved_by")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("consent", mode="before")
    @classmethod
    def _consent_alias(cls, value: object) -> object:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, str):
            return _CONSENT_ALIASES.get(value.strip().lower(), value)
        return value

    @model_validator(mode="after")
    def _per_image_names(self) -> DatasetCard:
        for name in self.per_image:
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise ValueError(f"per_image key {name!r} must be a plain file name")
        return self

    def problems(self) -> list[Problem]:
        """Blocking findings about the card itself (consent refused)."""
        found: list[Problem] = []
        if self.consent == "no":
            found.append(
                Problem(
                    "the people depicted have not consented to training on their images",
                    file=CARD_FILE,
                    path="$.consent",
                    code="card_no_consent",
                    hint="remove the images that show people, or get their consent and set consent to 'yes'",
                )
            )
        return found

    def to_metadata(self) -> dict[str, str]:
        """Flat string metadata for the LoRA file (safetensors metadata values must be strings)."""
        meta = {
            f"{METADATA_PREFIX}title": self.title,
            f"{METADATA_PREFIX}description": self.description,
            f"{METADATA_PREFIX}source": self.source,
            f"{METADATA_PREFIX}rights_holder": self.rights_holder,
            f"{METADATA_PREFIX}licence": self.licence,
            f"{METADATA_PREFIX}consent": self.consent,
            f"{METADATA_PREFIX}cultural_context": self.cultural_context,
            f"{METADATA_PREFIX}approved_by": self.approved_by,
        }
        if self.language:
            meta[f"{METADATA_PREFIX}language"] = self.language
        if self.tags:
            meta[f"{METADATA_PREFIX}tags"] = json.dumps(self.tags, ensure_ascii=False)
        if self.per_image:
            meta[f"{METADATA_PREFIX}per_image"] = json.dumps(
                {k: v.model_dump(exclude_none=True) for k, v in sorted(self.per_image.items())},
                ensure_ascii=False,
                sort_keys=True,
            )
        return meta

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.model_dump(mode="json"))


def _card_error(where: str, exc: ValidationError) -> DatasetError:
    problems = [
        Problem(
            err["msg"],
            file=where,
            path="$." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "$",
            code="card_invalid",
        )
        for err in exc.errors()
    ]
    return DatasetError(
        f"the dataset card {where} is incomplete or invalid",
        hint="a card needs title, description, source, rights_holder, licence, consent (yes/no/not_applicable), "
        "cultural_context and approved_by",
        problems=problems,
    )


def card_from_dict(data: dict, *, where: str = "card") -> DatasetCard:
    try:
        return DatasetCard.model_validate(data)
    except ValidationError as exc:
        raise _card_error(where, exc) from exc


def load_card(path: str | Path) -> DatasetCard:
    """Read a card JSON file; DatasetError with every missing or bad field."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(
            f"no dataset card at {p}",
            hint="write one (see `prepare --help`: --card card.json or --title/--licence/... flags); "
            "training needs a card",
        )
    try:
        data = safe_json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"the dataset card {p} is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"the dataset card {p} must be a JSON object")
    return card_from_dict(data, where=str(p))
