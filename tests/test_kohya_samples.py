"""Samples during Kohya training: the options we pass are sd-scripts' own (recorded flag list, pinned source), the
files its SD3 sampler writes become job samples with step, prompt and seed, and a sampler that crashes sd-scripts
costs the samples, never the run. The stand-in samples as `library/sd3_train_utils.sample_images` does."""

from __future__ import annotations

import ast
import json
import tomllib
from argparse import Namespace
from pathlib import Path

import pytest
from conftest import NEEDS_SD_SCRIPTS, SHARED
from kohya_standin import fixtures as standin_fixtures
from PIL import Image

from devserver_lora.train import runner
from devserver_lora.train.evaluate.pngtext import read_fields
from devserver_lora.train.evaluate.report import REPORT_JSON
from devserver_lora.train.evaluate.settings import EvalPrompt, EvalSettings, load_eval_settings, save_eval_settings
from devserver_lora.train.kohya import samples as ksamples
from devserver_lora.train.kohya.backend import KohyaBackend

kohya_env = standin_fixtures.kohya_env
SD_SCRIPTS = SHARED / "third_party" / "sd-scripts"
PROMPTS = [EvalPrompt(prompt="mgsq, a magenta square", seed=11), EvalPrompt(prompt="a grey wall", seed=12)]


def _sd_scripts_function(relpath: str, name: str) -> ast.FunctionDef:
    path = SD_SCRIPTS / relpath
    if not path.is_file():
        pytest.skip(f"{NEEDS_SD_SCRIPTS} at ../shared/third_party/sd-scripts ({relpath})")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _settings(**changes) -> EvalSettings:
    return EvalSettings(prompts=PROMPTS, sample_every_n_steps=2, size=64, steps=3, cfg=4.5,
                        negative_prompt="blurry").model_copy(update=changes)


# --- the facts, against the pinned sd-scripts source -----------------------------------------------------------------

def test_prompt_file_is_what_the_pinned_load_prompts_and_sampler_read(tmp_path: Path) -> None:
    config = ksamples.sample_config(_settings(), tmp_path, write=True)
    assert config == {"sample_prompts": str(tmp_path / ksamples.PROMPTS_FILE), "sample_every_n_steps": 2,
                      "sample_at_first": True}
    # train_util.load_prompts, run as written at the pin: our JSON file gives one dict per prompt, in order.
    load = _sd_scripts_function("library/train_util.py", "load_prompts")
    namespace: dict = {"json": json, "List": list, "Dict": dict}
    exec(compile(ast.Module(body=[load], type_ignores=[]), "train_util.py", "exec"), namespace)  # noqa: S102
    loaded = namespace["load_prompts"](config["sample_prompts"])
    assert [(p["prompt"], p["seed"], p["enum"]) for p in loaded] == [("mgsq, a magenta square", 11, 0),
                                                                    ("a grey wall", 12, 1)]
    # Every key we write is one sd3_train_utils.sample_image_inference reads (prompt_dict.get("...")).
    infer = _sd_scripts_function("library/sd3_train_utils.py", "sample_image_inference")
    read = {n.args[0].value for n in ast.walk(infer) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "get" and isinstance(n.func.value, ast.Name) and n.func.value.id == "prompt_dict"}
    assert set(loaded[0]) - {"enum"} <= read, set(loaded[0]) - read
    assert loaded[0]["width"] == 64 and loaded[0]["sample_steps"] == 3 and loaded[0]["scale"] == 4.5
    assert loaded[0]["negative_prompt"] == "blurry"


def test_sample_file_names_as_the_pinned_sampler_builds_them() -> None:
    infer = _sd_scripts_function("library/sd3_train_utils.py", "sample_image_inference")
    naming = [n for n in infer.body if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
              and n.targets[0].id in ("num_suffix", "seed_suffix", "img_filename")]
    assert len(naming) == 3
    code = compile(ast.Module(body=naming, type_ignores=[]), "sd3_train_utils.py", "exec")

    def name(epoch: int | None, steps: int, i: int, seed: int | None) -> str:
        ns = {"args": Namespace(output_name="my_lora"), "epoch": epoch, "steps": steps, "i": i, "seed": seed,
              "ts_str": "20261202123456"}
        exec(code, ns)  # noqa: S102 - three assignments of the pinned source, nothing else
        return ns["img_filename"]

    assert ksamples.parse_sample_name(name(None, 250, 3, 1003), "my_lora") == (250, 3, 1003)
    assert ksamples.parse_sample_name(name(0, 0, 1, 1001), "my_lora") == (0, 1, 1001)  # --sample_at_first
    assert ksamples.parse_sample_name(name(None, 4, 0, None), "my_lora") == (4, 0, None)
    assert ksamples.parse_sample_name(name(2, 8, 0, 5), "my_lora") is None  # per-epoch samples: never asked for
    assert ksamples.parse_sample_name(name(None, 4, 0, 5), "other") is None


def test_the_flags_are_in_the_recorded_flag_list_and_reach_the_trainer(kohya_env, monkeypatch, tmp_path) -> None:
    record = tmp_path / "seen.json"
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    job = kohya_env.job()
    save_eval_settings(job, _settings())
    KohyaBackend(kohya_env.settings, progress_interval_s=0.0, grace_s=2.0).run(job)
    config = tomllib.loads((job.work_dir / "config.toml").read_text(encoding="utf-8"))
    assert config["sample_every_n_steps"] == 2 and config["sample_at_first"] is True
    seen = json.loads(record.read_text())["args"]  # what the stand-in's argparse (the recorded flags) made of it
    assert seen["sample_prompts"] == str(job.work_dir / ksamples.PROMPTS_FILE)
    assert seen["sample_every_n_steps"] == "2" and seen["sample_at_first"] == "True"


# --- a run with samples ---------------------------------------------------------------------------------------------

def test_samples_become_job_samples_with_step_prompt_and_seed_then_plot_and_report(kohya_env) -> None:
    job = kohya_env.job()
    save_eval_settings(job, _settings())
    assert runner.run_worker(job, kohya_env.settings, backend="kohya", resume=False) == 0
    assert job.state == "done"
    events = job.events()
    samples = [e for e in events if e["type"] == "sample"]
    assert [(e["step"], e["index"], e["seed"], e["prompt"]) for e in samples] == [
        (step, i, 11 + i, PROMPTS[i].prompt) for step in (0, 2, 4, 6, 8) for i in (0, 1)]
    for e in samples:
        path = Path(e["path"])
        assert path == job.dir / "samples" / f"step{e['step']:08d}_p{e['index']:02d}_seed{e['seed']}.png"
        fields = read_fields(path)
        assert (fields["step"], fields["seed"], fields["prompt"]) == (str(e["step"]), str(e["seed"]), e["prompt"])
        with Image.open(path) as img:
            assert img.size == (64, 64)
    # Each sample is announced after the bar of its step and before that step's checkpoint.
    order = [(e["type"], e.get("step")) for e in events if e["type"] in ("sample", "checkpoint")]
    assert order.index(("sample", 2)) < order.index(("checkpoint", 2))
    facts = json.loads((job.dir / REPORT_JSON).read_text())
    assert facts["samples"]["steps"] == [0, 2, 4, 6, 8] and facts["job"]["state"] == "done"
    assert facts["training"]["loss_plot"] == "loss_plot.png"
    assert not [e for e in events if e["type"] == "log" and e.get("level") == "warning"]


@pytest.mark.parametrize(("fail_at", "published"), [(0, []), (4, [0, 2])])
def test_a_sampler_crash_is_a_warning_and_the_run_finishes(kohya_env, monkeypatch, fail_at, published) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "sample")
    monkeypatch.setenv("STANDIN_FAIL_AT", str(fail_at))
    job = kohya_env.job()
    save_eval_settings(job, _settings())
    assert runner.run_worker(job, kohya_env.settings, backend="kohya", resume=False) == 0
    assert job.state == "done" and (job.outputs_dir / "tiny_sd3_lora.safetensors").is_file()
    events = job.events()
    assert sorted({e["step"] for e in events if e["type"] == "sample"}) == published
    warnings = [e["message"] for e in events if e["type"] == "log" and e.get("level") == "warning"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"sd-scripts stopped while rendering samples at step {fail_at} (")
    assert warnings[0].endswith("training goes on without samples")
    assert [e for e in events if e["type"] == "done"][-1]["steps"] == 8
    attempts = json.loads((job.work_dir / "kohya" / "attempts.json").read_text())["attempts"]
    # One more attempt: from the last epoch-end state if there is one (kohya/backend.py), else from the start.
    assert len(attempts) == 2 and (fail_at > 0 or attempts[1]["resume_from"] is None)
    second = tomllib.loads((job.work_dir / "config.toml").read_text(encoding="utf-8"))
    assert "sample_prompts" not in second  # the second attempt samples nothing


def test_a_broken_eval_settings_file_costs_the_samples_not_the_run(kohya_env) -> None:
    job = kohya_env.job()
    (job.dir / "eval_settings.json").write_text('{"prompts": []}', encoding="utf-8")
    assert runner.run_worker(job, kohya_env.settings, backend="kohya", resume=False) == 0
    assert job.state == "done" and not [e for e in job.events() if e["type"] == "sample"]
    warnings = [e["message"] for e in job.events() if e["type"] == "log" and e.get("level") == "warning"]
    assert any(w.startswith("no samples during training:") for w in warnings), warnings


def test_default_settings_of_a_gpu_plan_sample_about_four_times(kohya_env) -> None:
    job = kohya_env.job()  # planned for a 32 GB card, 6 steps
    settings = load_eval_settings(job)
    assert settings.sample_every_n_steps == 2 and settings.sample_steps_of(6) == [0, 2, 4, 6]
    assert [p.seed for p in settings.prompts] == [1000, 1001, 1002, 1003]


def test_a_crash_in_the_step_after_a_finished_round_is_trainings(kohya_env, monkeypatch) -> None:
    # Samples at step 2 are all saved, then sd-scripts is killed during step 3: that is not the sampler's doing,
    # so the run fails as killed (resumable), and is not silently retried without samples.
    monkeypatch.setenv("STANDIN_FAIL", "kill")
    monkeypatch.setenv("STANDIN_FAIL_AT", "3")
    job = kohya_env.job()
    save_eval_settings(job, _settings())
    assert runner.run_worker(job, kohya_env.settings, backend="kohya", resume=False) == 1
    assert job.state == "failed" and job.info["diagnosis"] == "killed"
    assert sorted({e["step"] for e in job.events() if e["type"] == "sample"}) == [0, 2]
    assert not [e for e in job.events() if "while rendering samples" in e.get("message", "")]
    assert len(json.loads((job.work_dir / "kohya" / "attempts.json").read_text())["attempts"]) == 1
