"""`dataset.json`: the manifest of a normalised dataset folder.

Layout of a normalised dataset (what Kohya's `--train_data_dir` and the native backend read):
    <dataset_dir>/dataset.json
    <dataset_dir>/card.json                      (the dataset card; required before training)
    <dataset_dir>/checks.json                    (the check report of the import)
    <dataset_dir>/<repeats>_<class>/<sha256[:16]>.png  + same-stem .txt caption (UTF-8, one line)
The manifest holds nothing that depends on where the images came from except the `source` fields,
so importing the same images from a folder, metadata.jsonl, a ZIP or a Kohya tree gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...errors import DatasetError
from ...invocation import train_command

DATASET_MANIFEST = "dataset.json"
MANIFEST_VERSION = 1


class ManifestImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="path relative to the dataset folder, e.g. '10_yoruba/0a1b2c3d4e5f6a7b.png'")
    caption_file: str
    sha256: str = Field(description="of the normalised image file")
    source_sha256: str = Field(description="of the original file's bytes")
    width: int
    height: int
    mode: str = "RGB"
    source_mode: str
    source_format: str | None = None
    caption: str
    dhash: str = Field(description="64-bit grey difference hash (hex) of the image: a coarse identity of its layout")
    source: str = Field(description="where this image came from (file name, ZIP member, ...)")


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = MANIFEST_VERSION
    name: str
    trigger: str | None = None
    repeats: int = Field(ge=1)
    subset_dir: str
    resize: str
    max_side: int | None = None
    crop_size: int | None = None
    images: list[ManifestImage]
    source: dict[str, str] = Field(default_factory=dict, description="kind and path of the import source")

    @property
    def num_images(self) -> int:
        return len(self.images)


def load_manifest(dataset_dir: str | Path) -> DatasetManifest:
    path = Path(dataset_dir) / DATASET_MANIFEST
    if not path.is_file():
        raise DatasetError(
            f"{Path(dataset_dir)} is not a prepared dataset (no {DATASET_MANIFEST})",
            hint=f"run `{train_command('prepare SOURCE --out DIR')}` first",
        )
    try:
        return DatasetManifest.model_validate_json(path.read_bytes())
    except (ValidationError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is damaged: {exc}", hint="prepare the dataset again") from exc
