"""Datasets: import from four kinds of source, check, normalise into the Kohya layout with a manifest."""

from .manifest import DATASET_MANIFEST, DatasetManifest, ManifestImage, load_manifest

__all__ = ["DATASET_MANIFEST", "DatasetManifest", "ManifestImage", "load_manifest"]
