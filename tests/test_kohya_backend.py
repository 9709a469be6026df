"""KohyaBackend against the sd-scripts stand-in: progress events, checkpoints, every diagnosed failure, resume."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kohya_standin import fixtures as standin_fixtures

from devserver_lora.errors import BackendError
from devserver_lora.lora.header import read_header
from devserver_lora.train.backends import Backend, get_backend
from devserver_lora.train.kohya.backend import KohyaBackend

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


def backend(env, **kw) -> KohyaBackend:
    kw.setdefault("progress_interval_s", 0.0)
    kw.setdefault("grace_s", 2.0)
    return KohyaBackend(env.settings, **kw)


def events(job, kind):
    return [e for e in job.events() if e["type"] == kind]


def test_get_backend_auto_and_protocol(kohya_env, tmp_path):
    chosen = get_backend("auto", kohya_env.settings)
    assert chosen.name == "kohya" and isinstance(chosen, Backend)
    with pytest.raises(BackendError, match="unknown backend"):
        get_backend("fast", kohya_env.settings)


def test_run_success_events_and_checkpoints(kohya_env, tmp_path, monkeypatch):
    record = tmp_path / "seen.json"
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    job = kohya_env.job()
    final = backend(kohya_env).run(job)
    assert final == job.outputs_dir / "tiny_sd3_lora.safetensors"
    names = sorted(p.name for p in job.outputs_dir.glob("*.safetensors"))
    assert names == ["tiny_sd3_lora-000001.safetensors", "tiny_sd3_lora-step00000002.safetensors",
                     "tiny_sd3_lora-step00000004.safetensors", "tiny_sd3_lora-step00000006.safetensors",
                     "tiny_sd3_lora.safetensors"]
    steps = [e["step"] for e in events(job, "progress")]
    assert steps == sorted(steps) and steps[-1] == 8 and {e["total_steps"] for e in events(job, "progress")} == {8}
    assert events(job, "progress")[-1]["epoch"] == 2 and events(job, "progress")[-1]["loss"] is not None
    # Each step's event carries that step's loss: sd-scripts draws a step first with the previous step's avr_loss
    # (the stand-in's loss at step k is 2.3 + 0.05 * (7k mod 5)), then again with its own.
    def own(k: int) -> float:
        return float(f"{2.3 + 0.05 * ((k * 7) % 5):.3g}")

    losses = {e["step"]: e["loss"] for e in events(job, "progress") if e["step"] > 0}
    assert losses == {k: own(k) for k in range(1, 9)}
    ckpts = events(job, "checkpoint")
    assert [c["step"] for c in ckpts if "step0" in c["path"]] == [2, 4, 6]
    assert events(job, "done")[0]["lora_path"] == str(final) and events(job, "done")[0]["steps"] == 8
    # the stand-in wrote the recorded key layout for SD3.5 Large (no attn2: the checkpoint has none)
    keys = read_header(final).tensors
    assert len(keys) == 57 - 6 and not any("attn2" in k for k in keys)
    seen = json.loads(record.read_text())
    assert seen["env_offline"] == "1"  # tokenizers cached -> sd-scripts kept off the hub
    assert (job.logs_dir / "kohya.log").read_bytes().count(b"\r") > 3  # raw output kept, tqdm redraws included
    command = json.loads((job.work_dir / "command.json").read_text())
    assert command["argv"][1].endswith("sd3_train_network.py")


@pytest.mark.parametrize(
    ("env", "overrides", "code"),
    [
        ({"STANDIN_FAIL": "oom", "STANDIN_FAIL_AT": "2"}, {}, "cuda_oom"),
        ({"STANDIN_FAIL": "arch"}, {}, "cuda_arch"),
        ({"STANDIN_FAIL": "model"}, {}, "model_mismatch"),
        ({"STANDIN_FAIL": "nan", "STANDIN_FAIL_AT": "2"}, {}, "nan_loss"),
        ({"STANDIN_FAIL": "kill", "STANDIN_FAIL_AT": "2"}, {}, "killed"),
        ({"STANDIN_FAIL": "bnb_missing"}, {"optimizer": "AdamW8bit"}, "bitsandbytes_missing"),
        ({"STANDIN_FLAGS_DROP": "console_log_simple"}, {}, "bad_flag"),
        ({"STANDIN_SCHEMA_DROP": "bucket_no_upscale"}, {}, "dataset_toml_invalid"),
    ],
)
def test_failures_are_diagnosed(kohya_env, monkeypatch, env, overrides, code):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    job = kohya_env.job(**overrides)
    with pytest.raises(BackendError) as exc:
        backend(kohya_env).run(job)
    assert exc.value.diagnosis == code
    errors = events(job, "error")
    assert errors and errors[-1]["diagnosis"] == code and errors[-1]["hint"]
    assert not events(job, "done")


def test_nan_stops_the_trainer_early(kohya_env, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "nan")
    monkeypatch.setenv("STANDIN_STEP_S", "0.2")
    job = kohya_env.job(max_train_steps=40, save_every_n_steps=None)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as exc:
        backend(kohya_env, nan_limit=2).run(job)
    assert exc.value.diagnosis == "nan_loss"
    assert time.monotonic() - t0 < 6  # 40 steps would take 8 s
    assert any(e["loss_is_nan"] for e in events(job, "progress"))


def test_no_data_exit_zero_without_lora(kohya_env, monkeypatch, tmp_path):
    # sd-scripts prints "No data found" and exits 0 without a LoRA; the stand-in replays exactly that
    log = tmp_path / "nodata.txt"
    log.write_text("prepare images.\nfound directory /d/2_x contains 0 image files\n"
                   "No data found. Please verify arguments (train_data_dir must be the parent of folders with "
                   "images) / 画像がありません。\n", encoding="utf-8")
    monkeypatch.setenv("STANDIN_REPLAY", str(log))
    job = kohya_env.job()
    with pytest.raises(BackendError) as exc:
        backend(kohya_env).run(job)
    assert exc.value.diagnosis == "no_data" and "N_<trigger>" in exc.value.hint


def test_replayed_real_log_gives_the_recorded_progress(kohya_env, monkeypatch):
    from conftest import KOHYA_FIXTURES

    monkeypatch.setenv("STANDIN_REPLAY", str(KOHYA_FIXTURES / "run_log.txt"))
    monkeypatch.setenv("STANDIN_CHUNK_S", "0.001")
    job = kohya_env.job()
    with pytest.raises(BackendError) as exc:  # the recorded run wrote its files elsewhere (/srv/...)
        backend(kohya_env).run(job)
    assert exc.value.diagnosis == "no_output"
    progress = events(job, "progress")
    assert [e["step"] for e in progress] == [0, 1, 2, 3, 4]
    assert [e["loss"] for e in progress[1:]] == [2.32, 2.36, 2.32, 2.24]
    assert [e["epoch"] for e in progress[1:]] == [1, 1, 2, 2] and progress[-1]["total_epochs"] == 2


def test_cancel_keeps_checkpoints(kohya_env, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "hang")
    monkeypatch.setenv("STANDIN_FAIL_AT", "3")
    job = kohya_env.job()
    stop = threading.Event()

    def stopper():
        for _ in range(200):
            if events(job, "checkpoint"):
                break
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=stopper, daemon=True).start()
    with pytest.raises(BackendError) as exc:
        backend(kohya_env, grace_s=1.0).run(job, stop=stop)
    assert exc.value.diagnosis == "cancelled"
    assert (job.outputs_dir / "tiny_sd3_lora-step00000002.safetensors").is_file()


def test_resume_continues_counting_steps_without_overwriting(kohya_env, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "kill")
    monkeypatch.setenv("STANDIN_FAIL_AT", "6")
    job = kohya_env.job(max_train_steps=8)  # 2 epochs of 4 images, a step checkpoint every 2
    b = backend(kohya_env)
    with pytest.raises(BackendError) as exc:
        b.run(job)
    assert exc.value.diagnosis == "killed"
    first = (job.outputs_dir / "tiny_sd3_lora-step00000004.safetensors").read_bytes()
    monkeypatch.delenv("STANDIN_FAIL")
    final = b.run(job, resume=True)
    names = sorted(p.name for p in job.outputs_dir.glob("*.safetensors"))
    # the resume starts at epoch 2 (step 4); sd-scripts restarted its counter at 0: its step-2 file is our step 6
    assert names == ["tiny_sd3_lora-000001.safetensors", "tiny_sd3_lora-step00000002.safetensors",
                     "tiny_sd3_lora-step00000004.safetensors", "tiny_sd3_lora-step00000006.safetensors",
                     "tiny_sd3_lora-step00000008.safetensors", "tiny_sd3_lora.safetensors"]
    assert (job.outputs_dir / "tiny_sd3_lora-step00000004.safetensors").read_bytes() == first
    assert read_header(job.outputs_dir / "tiny_sd3_lora-step00000006.safetensors").metadata["ss_steps"] == "6"
    assert final.name == "tiny_sd3_lora.safetensors"
    assert read_header(final).metadata["ss_steps"] == "8" and read_header(final).metadata["ss_epoch"] == "2"
    progress = [e["step"] for e in events(job, "progress")]
    after = progress[progress.index(5) + 1:]
    assert max(progress) == 8 and after[0] == 4 and after == sorted(after)  # the attempt starts at its state
    assert events(job, "done")[0]["steps"] == 8
    attempts = json.loads((job.work_dir / "kohya" / "attempts.json").read_text())["attempts"]
    assert [a["offset"] for a in attempts] == [0, 4] and attempts[1]["resume_from"].endswith("tiny_sd3_lora-000001-state")
    argv = json.loads((job.work_dir / "command.json").read_text())["argv"]
    assert argv[argv.index("--initial_epoch") + 1] == "2"


def _trained_steps(job) -> list[int]:
    """Every step the trainer ran, absolute, in order (from the progress events of all attempts)."""
    steps: list[int] = []
    for e in events(job, "progress"):
        if steps and e["step"] <= steps[-1]:
            steps = [s for s in steps if s < e["step"]]  # a resume went back to its state: those steps run again
        steps.append(e["step"])
    return [s for s in steps if s > 0]  # a bar at 0 of an attempt is where it starts, not a step


def test_any_number_of_resumes_ends_at_the_planned_step(kohya_env, monkeypatch):
    """Issue 12 item 2: after a resume sd-scripts saves `current_step` counted from that attempt, so a second plain
    `--resume` started from a wrong epoch and overran the plan (3,000 planned, 3,502 trained). `--initial_epoch`
    makes every resume start at the state's epoch; labels stay absolute."""
    job = kohya_env.job(max_train_steps=16, save_every_n_steps=None)  # 4 epochs of 4 steps
    b = backend(kohya_env)
    monkeypatch.setenv("STANDIN_FAIL", "kill")
    # Killed at absolute steps 6, 10 and 14: the last epoch-end state each time is at step 4, 8 and 12.
    for resume, fail_at in ((False, "6"), (True, "6"), (True, "6")):
        monkeypatch.setenv("STANDIN_FAIL_AT", fail_at)
        with pytest.raises(BackendError):
            b.run(job, resume=resume)
    monkeypatch.delenv("STANDIN_FAIL")
    final = b.run(job, resume=True)
    attempts = json.loads((job.work_dir / "kohya" / "attempts.json").read_text())["attempts"]
    assert [a["offset"] for a in attempts] == [0, 4, 8, 12]
    assert [a["initial_epoch"] for a in attempts] == [None, 2, 3, 4]
    assert events(job, "done")[-1]["steps"] == 16 and max(e["step"] for e in events(job, "progress")) == 16
    assert _trained_steps(job) == list(range(1, 17))  # every step once, the last one the plan's
    names = sorted(p.name for p in job.outputs_dir.glob("*.safetensors"))
    assert names == [f"tiny_sd3_lora-00000{i}.safetensors" for i in (1, 2, 3)] + ["tiny_sd3_lora.safetensors"]
    for epoch in (1, 2, 3):
        meta = read_header(job.outputs_dir / f"tiny_sd3_lora-00000{epoch}.safetensors").metadata
        assert (meta["ss_epoch"], meta["ss_steps"]) == (str(epoch), str(4 * epoch))
    assert (read_header(final).metadata["ss_epoch"], read_header(final).metadata["ss_steps"]) == ("4", "16")


def test_resume_skips_a_state_cut_short(kohya_env, monkeypatch):
    """A cancel while sd-scripts saves a state leaves train_state.json (written first) without the RNG states
    (written last by accelerate): resuming from it would fail inside sd-scripts, so the one before is used."""
    job = kohya_env.job(max_train_steps=12, save_every_n_steps=None)  # 3 epochs of 4 steps
    b = backend(kohya_env)
    monkeypatch.setenv("STANDIN_FAIL", "kill")
    monkeypatch.setenv("STANDIN_FAIL_AT", "10")
    with pytest.raises(BackendError):
        b.run(job)
    (job.work_dir / "kohya" / "run-1" / "tiny_sd3_lora-000002-state" / "random_states_0.pkl").unlink()
    monkeypatch.delenv("STANDIN_FAIL")
    b.run(job, resume=True)
    attempts = json.loads((job.work_dir / "kohya" / "attempts.json").read_text())["attempts"]
    assert attempts[1]["resume_from"].endswith("tiny_sd3_lora-000001-state") and attempts[1]["offset"] == 4
    assert events(job, "done")[-1]["steps"] == 12


def test_resume_warns_when_the_plan_is_not_whole_epochs(kohya_env, monkeypatch):
    # A plan made for the native backend keeps steps off an epoch end (a Kohya plan rounds them up to one).
    job = kohya_env.job(max_train_steps=7, save_every_n_steps=None, planned_for="native")  # 1 3/4 epochs of 4 steps
    assert job.plan.hyper.max_train_steps == 7
    b = backend(kohya_env)
    monkeypatch.setenv("STANDIN_FAIL", "kill")
    monkeypatch.setenv("STANDIN_FAIL_AT", "6")
    with pytest.raises(BackendError):
        b.run(job)
    monkeypatch.delenv("STANDIN_FAIL")
    b.run(job, resume=True)
    warning = [e["message"] for e in events(job, "log") if e.get("level") == "warning"]
    assert any("not whole epochs of 4 steps" in m and "at step 8" in m for m in warning)
    assert events(job, "done")[-1]["steps"] == 8  # what sd-scripts does, said before it happens


def test_resume_without_state_is_refused(kohya_env):
    job = kohya_env.job()
    with pytest.raises(BackendError) as exc:
        backend(kohya_env).run(job, resume=True)
    assert exc.value.diagnosis == "no_state"


def test_preflight_reports_blockers(kohya_env):
    job = kohya_env.job()
    (kohya_env.models_dir / "clip_g.safetensors").unlink()
    problems = backend(kohya_env).preflight(job)
    assert any(p.code == "model_missing" and p.path == "clip_g" for p in problems)


def test_auto_falls_back_to_native_without_kohya(tmp_path, monkeypatch):
    from devserver_lora.train.settings import load_settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("KOHYA_DIR", raising=False)
    settings = load_settings(home=tmp_path)
    assert get_backend("auto", settings).name == "native"
    assert get_backend("auto", settings, kohya_dir=tmp_path / "missing", num_processes=2).name == "native"
