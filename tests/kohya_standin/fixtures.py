"""pytest fixtures for the Kohya tests: a fake install, models, dataset and settings in tmp_path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import KOHYA_FIXTURES

from .build import make_dataset, make_job, make_kohya_install, make_models


@dataclass
class KohyaEnv:
    root: Path
    kohya_dir: Path
    models_dir: Path
    dataset_dir: Path
    jobs_dir: Path
    settings: object

    def job(self, output_name: str = "tiny_sd3_lora", *, planned_for: str = "kohya", **overrides):
        base = {"max_train_steps": 8, "save_every_n_steps": 2, "repeats": 1, "batch_size": 1}  # 2 epochs of 4
        base.update(overrides)
        return make_job(self.jobs_dir, self.dataset_dir, output_name=output_name, overrides=base, backend=planned_for)


@pytest.fixture
def kohya_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KohyaEnv:
    from devserver_lora.train.settings import load_settings

    if not KOHYA_FIXTURES.is_dir():
        pytest.fail(f"recorded Kohya fixtures not found at {KOHYA_FIXTURES}")
    for var in ("STANDIN_FAIL", "STANDIN_FAIL_AT", "STANDIN_REPLAY", "STANDIN_SCHEMA_DROP", "STANDIN_FLAGS_DROP",
                "STANDIN_RECORD", "KOHYA_DIR", "DEVSERVER_LORA_MODELS", "DEVSERVER_LORA_JOBS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STANDIN_FIXTURES", str(KOHYA_FIXTURES))
    monkeypatch.setenv("STANDIN_STEP_S", "0.002")
    monkeypatch.setenv("DEVSERVER_LORA_HOME", str(tmp_path / "home"))
    kohya = make_kohya_install(tmp_path / "kohya")
    models = make_models(tmp_path / "models", depth=2)  # the depth of the recorded LoRA layout
    dataset = make_dataset(tmp_path / "dataset")
    settings = load_settings(home=tmp_path / "home", jobs_dir=tmp_path / "jobs", kohya_dir=kohya, models_dir=models,
                             comfyui_loras_dir=tmp_path / "loras", devserver_schemas_dir=tmp_path / "schemas")
    return KohyaEnv(tmp_path, kohya, models, dataset, tmp_path / "jobs", settings)
