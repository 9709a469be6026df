"""The Kohya backend against the facts of the pinned sd-scripts source (issue 12 items 1, 3 and 7, and the stand-in).

The facts are read from the source by tests/sd_scripts_facts.py; tests/fixtures/kohya/sd_scripts_facts.json keeps a
copy so that everything but the copy's own check runs from a clone alone.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import NEEDS_SD_SCRIPTS
from kohya_standin import fixtures as standin_fixtures
from sd_scripts_facts import SD_SCRIPTS, load_facts, source_facts, standin_fragments

from devserver_lora.errors import PlanError
from devserver_lora.train.families import FAMILIES, get_family
from devserver_lora.train.gpu import GpuInfo
from devserver_lora.train.kohya import args as kargs
from devserver_lora.train.kohya.backend import KohyaBackend
from devserver_lora.train.kohya.diagnose import Watcher, diagnose
from devserver_lora.train.kohya.flags import dataset_keys, general_keys, subset_keys
from devserver_lora.train.kohya.models import ROLES, ModelFiles, find_model_files
from devserver_lora.train.plan import TE_CACHE_ASSERTION, make_plan

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture
FACTS = load_facts()
GPU = GpuInfo(name="NVIDIA GeForce RTX 5090", vram_gb=32, compute_capability="12.0")


def test_the_facts_copy_is_what_the_pinned_source_says():
    if not (SD_SCRIPTS / "sd3_train_network.py").is_file():
        pytest.skip(f"{NEEDS_SD_SCRIPTS}: {SD_SCRIPTS}")
    assert source_facts(SD_SCRIPTS) == FACTS, "run `.venv/bin/python tests/sd_scripts_facts.py` and review the diff"


def test_the_standin_prints_only_what_the_real_trainer_or_its_libraries_print():
    # Every line of text the stand-in prints is either in sd-scripts' source or named with its real origin (Python,
    # torch, CUDA, voluptuous); an invented failure string fails here (and, with the source, the copy check above).
    origins = FACTS["standin_strings"]
    assert list(origins) == standin_fragments(), "the stand-in's strings changed: regenerate the facts copy"
    assert [f for f, o in origins.items() if o == "UNACCOUNTED"] == []
    assert origins["AssertionError: Cannot swap more than"].startswith("sd-scripts:")
    assert origins[FACTS["messages"]["te_cache_assertion"]["text"]].startswith("sd-scripts:")


# ----------------------------------------------------------------------------- item 1: caption dropout vs cache
def _assertion_output() -> list[str]:
    text = FACTS["messages"]["te_cache_assertion"]["text"]  # sd3_train_network.py Sd3NetworkTrainer.assert_extra_args
    return ["Traceback (most recent call last):",
            '  File "/kohya/sd-scripts/sd3_train_network.py", line 51, in assert_extra_args',
            f"AssertionError: {text}"]


def test_the_plan_quotes_the_real_assertion():
    assert FACTS["messages"]["te_cache_assertion"]["text"].startswith(TE_CACHE_ASSERTION)


def test_diagnosis_names_the_text_encoder_cache_assertion_with_both_fixes():
    watcher = Watcher()
    for line in _assertion_output():
        watcher.feed(line)
    d = diagnose(returncode=1, watcher=watcher, output_exists=False)
    assert d is not None and d.code == "caption_vs_text_encoder_cache"
    assert "caption_dropout_rate" in d.message and "cached" in d.message
    assert "--set caption_dropout_rate=0" in d.hint and "--set shuffle_caption=false" in d.hint
    assert "--set cache_text_encoder_outputs=false" in d.hint


def test_diagnosis_names_the_block_swap_bound():
    line = "AssertionError: " + FACTS["messages"]["block_swap_bound"]["text"].format(22, 30)
    watcher = Watcher()
    for text in ("Traceback (most recent call last):", line):
        watcher.feed(text)
    d = diagnose(returncode=1, watcher=watcher, output_exists=False)
    assert d is not None and d.code == "blocks_to_swap_too_many" and "Cannot swap more than 22 blocks" in d.message


def test_check_job_refuses_an_existing_plan_with_shuffled_captions_and_a_cache(kohya_env, capsys):
    # A job planned before this check (its plan.json edited here to what such a plan held): `check --job` and the
    # backend's preflight refuse it before sd-scripts would assert.
    from devserver_lora.train.cli import main

    job = kohya_env.job()
    plan = job.plan
    plan.hyper.shuffle_caption = True
    (Path(job.dir) / "plan.json").write_text(plan.model_dump_json())
    problems = KohyaBackend(kohya_env.settings).preflight(job, probe=False)
    refused = [p for p in problems if "shuffle_caption=true" in p.message]
    assert refused and "cache_text_encoder_outputs=false" in (refused[0].hint or "")
    code = main(["check", "--job", job.id, "--no-probe", "--jobs-dir", str(kohya_env.jobs_dir),
                 "--kohya-dir", str(kohya_env.kohya_dir), "--models-dir", str(kohya_env.models_dir)])
    out = capsys.readouterr().out
    assert code == 1 and "when caching Text Encoder output" in out and "cache_text_encoder_outputs=false" in out


# ----------------------------------------------------------------------------- item 3: only settings that act
def _reads(script: str) -> tuple[set[str], tuple[str, ...]]:
    facts = FACTS["args_read"][script]
    # config_util's BlueprintGenerator reads the dataset options of the namespace too (vars(argparse_namespace)).
    dataset_options = set(general_keys()) | set(dataset_keys()) | set(subset_keys())
    return set(facts["names"]) | dataset_options, tuple(p for p in facts["prefixes"] if p != "metadata___")


def _ignored(script: str, keys: list[str]) -> list[str]:
    names, prefixes = _reads(script)
    return [k for k in keys if k not in names and not k.startswith(prefixes)]


def _dataset_problems(doc: dict) -> list[str]:
    found = []
    tables = [doc.get("general", {}), *doc.get("datasets", [])]
    tables += [s for d in doc.get("datasets", []) for s in d.get("subsets", [])]
    no_upscale = any(t.get("bucket_no_upscale") for t in tables)
    for t in tables:
        # library/train_util.py BaseDataset.make_buckets: FACTS["messages"]["bucket_no_upscale_ignores_reso"]
        if no_upscale and {"min_bucket_reso", "max_bucket_reso"} & set(t):
            found.append("min/max_bucket_reso with bucket_no_upscale")
        # library/train_util.py BaseDataset.process_caption reads keep_tokens only to shuffle or drop tags
        if "keep_tokens" in t and not any(x.get("shuffle_caption") for x in tables):
            found.append("keep_tokens without shuffle_caption")
    return found


def test_generated_files_hold_only_settings_the_real_sd3_trainer_reads(kohya_env):
    job = kohya_env.job()
    backend = KohyaBackend(kohya_env.settings)
    _, cmd = backend._command(job, backend_attempt(job), None, write=True)
    config = tomllib.loads(cmd.config_toml.read_text(encoding="utf-8"))
    dataset = tomllib.loads(cmd.dataset_toml.read_text(encoding="utf-8"))
    keys = list(config) + kargs.argv_flags(cmd.argv)
    assert _ignored("sd3_train_network.py", keys) == []
    assert "sdpa" not in config
    assert _dataset_problems(dataset) == []
    assert FACTS["messages"]["bucket_no_upscale_ignores_reso"]["function"] == "BaseDataset.make_buckets"


def backend_attempt(job):
    from devserver_lora.train.kohya.backend import _Attempt

    return _Attempt(Path(job.work_dir) / "kohya", 0, 0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_writes_only_settings_its_script_reads(kohya_env, family, tmp_path):
    fam = get_family(family)
    plan = make_plan(family, "quick_test", kohya_env.dataset_dir, gpu=GPU, backend="kohya",
                     overrides={"shuffle_caption": True, "cache_text_encoder_outputs": False, "flip_aug": True})
    models = ModelFiles(family)
    for role in ROLES[family]:  # the files the family's script takes
        models.files[role] = tmp_path / f"{role}.safetensors"
    cfg = kargs.train_config(plan, models, dataset_toml=tmp_path / "d.toml", output_dir=tmp_path,
                             tokenizer_cache_dir=tmp_path)
    keys = list(cfg) + kargs.argv_flags(kargs.fixed_args(plan, tmp_path))
    assert _ignored(fam.kohya_script, keys) == []
    assert ("sdpa" in cfg) == (family in ("sd15", "sdxl"))  # read only by train_network/sdxl load_target_model
    doc = kargs.dataset_config(plan)
    assert _dataset_problems(doc) == [] and doc["general"]["keep_tokens"] == 1  # shuffled: keep the trigger first


def test_the_reads_check_catches_what_the_sd3_trainer_ignores():
    # The check itself: flags every script accepts but the SD3 path never reads.
    assert _ignored("sd3_train_network.py", ["sdpa", "xformers", "mem_eff_attn", "metadata_trigger_phrase"]) == [
        "sdpa", "xformers", "mem_eff_attn"]
    assert _ignored("sdxl_train_network.py", ["sdpa"]) == []


# ----------------------------------------------------------------------------- item 7: blocks_to_swap vs depth
def test_check_refuses_more_swapped_blocks_than_the_checkpoint_has(kohya_env, capsys):
    from devserver_lora.train.cli import main

    job = kohya_env.job(blocks_to_swap=2)  # the plan swaps 2 of SD3.5 Large's 38; the test checkpoint has 2 blocks
    assert job.plan.memory.blocks_to_swap == 2
    models = find_model_files(job.plan.family, kohya_env.models_dir)
    with pytest.raises(PlanError) as exc:
        kargs.build_command(job.plan, python=Path("python"), scripts_dir=kohya_env.root, models=models,
                            work_dir=kohya_env.root, output_dir=kohya_env.root, logging_dir=kohya_env.root,
                            tokenizer_cache_dir=None, write=False)
    text = str(exc.value)
    assert "blocks_to_swap=2" in text and "2 joint blocks" in text and "at most depth - 2 = 0" in text
    assert "--set blocks_to_swap=0" in text
    assert not (kohya_env.root / "config.toml").exists()  # refused before anything was written
    code = main(["check", "--job", job.id, "--no-probe", "--jobs-dir", str(kohya_env.jobs_dir),
                 "--kohya-dir", str(kohya_env.kohya_dir), "--models-dir", str(kohya_env.models_dir)])
    out = capsys.readouterr().out
    assert code == 1 and "2 joint blocks" in out


def test_a_swap_the_checkpoint_allows_passes(kohya_env, tmp_path):
    from kohya_standin.build import make_models

    models_dir = make_models(tmp_path / "deep", depth=6)
    job = kohya_env.job(blocks_to_swap=4)  # 6 - 2 = 4 may be swapped
    models = find_model_files(job.plan.family, models_dir)
    assert kargs.trainer_refusal_problems(job.plan, models) == []
    job6 = kohya_env.job("six", blocks_to_swap=6)
    assert [p.code for p in kargs.trainer_refusal_problems(job6.plan, models)] == ["blocks_to_swap_too_many"]
