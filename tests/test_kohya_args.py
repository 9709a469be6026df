"""Generated Kohya files and argv, checked against the recorded flag list and sd-scripts' dataset schema."""

from __future__ import annotations

import csv
import importlib.util
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import voluptuous
from conftest import KOHYA_FIXTURES
from kohya_standin import fixtures as standin_fixtures
from kohya_standin.build import HERE as STANDIN_DIR

from devserver_lora.errors import DatasetError
from devserver_lora.train.kohya import args as kargs
from devserver_lora.train.kohya.flags import SD3_IGNORED_FLAGS, dataset_config_problems, sd3_flags
from devserver_lora.train.kohya.models import find_model_files

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


def recorded_flags() -> dict[str, dict]:
    with open(KOHYA_FIXTURES / "sd3_train_network_flags.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out = {}
    for row in rows:
        for opt in row["option"].split(","):
            if opt.startswith("--"):
                out[opt[2:]] = row
    return out


def standin_validator(monkeypatch=None):
    """The voluptuous schema the stand-in (written from sd-scripts' config_util) enforces."""
    spec = importlib.util.spec_from_file_location("_standin_mod", STANDIN_DIR / "sd-scripts" / "_standin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.dataset_validator()


def test_shipped_flag_list_is_the_recorded_one():
    recorded = recorded_flags()
    shipped = sd3_flags()
    assert set(shipped) == set(recorded)
    for name, flag in shipped.items():
        assert flag.action == recorded[name]["action"], name


def test_generated_files_use_only_recorded_flags_and_schema_keys(kohya_env):
    job = kohya_env.job()
    models = find_model_files("sd35_large", kohya_env.models_dir)
    cmd = kargs.build_command(
        job.plan, python=Path("/venv/bin/python"), scripts_dir=kohya_env.kohya_dir / "sd-scripts", models=models,
        work_dir=job.work_dir, output_dir=job.work_dir / "out", logging_dir=job.logs_dir / "tb",
        tokenizer_cache_dir=kohya_env.kohya_dir / "tokenizers",
    )
    recorded = recorded_flags()
    config = tomllib.loads(cmd.config_toml.read_text())
    assert all(not isinstance(v, dict) for v in config.values()), "config.toml must be flat"
    for key in config:
        assert key in recorded, f"--{key} is not in the recorded flag list"
        assert key not in SD3_IGNORED_FLAGS
    flags = [a[2:] for a in cmd.argv if a.startswith("--")]
    for flag in flags:
        assert flag in recorded, f"--{flag} is not in the recorded flag list"
    assert not set(flags) & SD3_IGNORED_FLAGS
    # what the issue requires on every command line
    for must in ("console_log_simple", "caption_extension", "save_every_n_epochs", "save_state", "logging_dir"):
        assert must in flags
    assert cmd.argv[cmd.argv.index("--network_module") + 1] == "networks.lora_sd3"
    assert cmd.argv[cmd.argv.index("--caption_extension") + 1] == ".txt"
    assert Path(cmd.argv[1]).name == "sd3_train_network.py"
    assert all(isinstance(a, str) for a in cmd.argv)
    # choices recorded in the flag list are respected
    for key, value in config.items():
        choices = recorded[key]["choices"]
        if choices.startswith("["):
            assert value in eval(choices), (key, value)  # noqa: S307 - our own recorded fixture
    # the dataset TOML passes both our checker and sd-scripts' voluptuous schema
    dataset = tomllib.loads(cmd.dataset_toml.read_text())
    assert dataset_config_problems(dataset) == []
    standin_validator()(dataset)
    sub = dataset["datasets"][0]["subsets"][0]
    assert Path(sub["image_dir"]).name == "2_tinyobj"
    assert sub["num_repeats"] == job.plan.hyper.repeats
    assert dataset["general"]["caption_extension"] == ".txt"
    # never epochs: sd-scripts would let them override the plan's exact step count
    assert config["max_train_steps"] == job.plan.hyper.max_train_steps
    assert "max_train_epochs" not in config


def test_resume_and_accelerate_argv(kohya_env):
    job = kohya_env.job()
    models = find_model_files("sd35_large", kohya_env.models_dir)
    cmd = kargs.build_command(
        job.plan, python=Path("/venv/bin/python"), scripts_dir=Path("/sd"), models=models, work_dir=job.work_dir,
        output_dir=job.work_dir / "out", logging_dir=job.logs_dir, tokenizer_cache_dir=None,
        resume_state=Path("/x/tiny-000001-state"), num_processes=2, write=False,
    )
    assert cmd.argv[:6] == ["/venv/bin/python", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                            "2"]
    assert cmd.argv[cmd.argv.index("--num_cpu_threads_per_process") + 2].endswith("sd3_train_network.py")
    assert cmd.argv[cmd.argv.index("--resume") + 1] == "/x/tiny-000001-state"
    assert not cmd.config_toml.exists()


def test_checker_matches_voluptuous_on_bad_documents():
    validator = standin_validator()
    good = {"general": {"caption_extension": ".txt"},
            "datasets": [{"resolution": 512, "subsets": [{"image_dir": "/d/1_x", "num_repeats": 1}]}]}
    assert dataset_config_problems(good) == []
    validator(good)
    bad_docs = [
        {"general": {"repeats": 2}},
        {"datasets": [{"subsets": [{"image_dir": "/d", "caption_ext": ".txt"}]}]},
        {"datasets": [{"subsets": [{"num_repeats": 1}]}]},
        {"datasets": [{"resolution": "512", "subsets": [{"image_dir": "/d"}]}]},
        {"datasets": [{"validation_split": 0, "subsets": [{"image_dir": "/d"}]}]},
        {"dataset": []},
    ]
    for doc in bad_docs:
        assert dataset_config_problems(doc), doc
        with pytest.raises(voluptuous.Invalid):
            validator(doc)
    problems = dataset_config_problems({"general": {"repeats": 2}})
    assert problems[0].code == "extra_key" and "extra keys not allowed" in problems[0].message


@pytest.mark.parametrize("family", ["sdxl", "sd15", "flux_dev"])
def test_other_families_get_their_script_and_only_vouched_flags(kohya_env, family):
    plan = kohya_env.job().plan.model_copy(update={"family": family})
    roles = {"sdxl": ("checkpoint",), "sd15": ("checkpoint",), "flux_dev": ("checkpoint", "clip_l", "t5xxl", "ae")}
    models = SimpleNamespace(get=lambda role, _r=roles[family]: Path(f"/m/{role}.safetensors") if role in _r else None)
    cfg = kargs.train_config(plan, models, dataset_toml=Path("/d.toml"), output_dir=Path("/o"),
                             tokenizer_cache_dir=None)
    assert kargs.config_problems(family, cfg) == []
    sd3_only = {"clip_g", "training_shift", "blocks_to_swap", "apply_lg_attn_mask"}
    assert not sd3_only & set(cfg)
    if family == "flux_dev":
        assert cfg["ae"] == "/m/ae.safetensors" and cfg["weighting_scheme"] in ("logit_normal", "none", "mode")
    cmd = kargs.build_command(plan, python=Path("/p"), scripts_dir=Path("/s"), models=models,
                              work_dir=kohya_env.root / "w", output_dir=Path("/o"), logging_dir=Path("/l"),
                              tokenizer_cache_dir=None, write=False)
    from devserver_lora.train.families import get_family

    assert Path(cmd.argv[1]).name == get_family(family).kohya_script
    assert cmd.argv[cmd.argv.index("--network_module") + 1] == get_family(family).kohya_network_module


def test_unknown_or_ignored_flags_are_refused():
    problems = kargs.config_problems("sd35_large", {"clip_skip": 2, "xformers": True, "learning_rat": 1e-4,
                                                 "mixed_precision": "fp32"})
    codes = sorted(p.code for p in problems)
    assert codes == ["choice", "unknown_flag", "unknown_flag", "unknown_flag"]


def test_empty_dataset_is_refused_before_sd_scripts_says_no_data(tmp_path):
    (tmp_path / "2_x").mkdir()
    with pytest.raises(DatasetError, match="No data found"):
        kargs.find_subsets(tmp_path)
