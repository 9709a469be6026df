"""Several-process native training: the accelerate command line, the GPU preflight, and real 2-process CPU runs
through the detached runner (done once with one LoRA and one event per step; cancel leaves no process behind)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from devserver_lora.train import runner
from devserver_lora.train.backends import get_backend
from devserver_lora.train.card import load_card
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.native import NativeBackend, launch, rank, tiny
from devserver_lora.train.native.backend import MODEL_FILE
from devserver_lora.train.native.models import ModelSource
from devserver_lora.train.plan import make_plan
from devserver_lora.train.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the smallest resolution a plan allows; the point here is the processes, not the learning
    return tiny.write_planted_dataset(tmp_path_factory.mktemp("planted") / "ds", n=4, size=256)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_tiny_diffusers_model(tmp_path_factory.mktemp("tiny_model"))


def _job(tmp_path: Path, planted: Path, model: Path, **overrides):
    values = {"resolution": 256, "max_train_steps": 6, "learning_rate": 1e-3, "save_every_n_steps": 2,
              "save_every_n_epochs": 100}
    values.update(overrides)
    plan = make_plan("sd35_medium", "quick_test", planted, gpu=None, overrides=values, backend="native",
                     output_name="magenta")
    job = JobStore(tmp_path / "jobs").create(plan, card=load_card(planted / "card.json"))
    job.write_json(MODEL_FILE, ModelSource(diffusers_dir=model, tiny_tokenizer=True))
    return job


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", jobs_dir=tmp_path / "jobs")


def _processes() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            found[int(entry.name)] = int(fields[1])
    return found


def _tree(root: int) -> set[int]:
    """`root` and its descendants (the ranks run in sessions of their own, so a process group misses them)."""
    procs = _processes()
    tree, grew = ({root} if root in procs else set()), True
    while grew:
        more = {pid for pid, parent in procs.items() if parent in tree} - tree
        grew = bool(more)
        tree |= more
    return tree


def _gone(pids: set[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pids & set(_processes()):
            return True
        time.sleep(0.1)
    return False


def _wait_for_checkpoint(job, after_event: int = 0) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        steps = [e["step"] for e in job.events()[after_event:] if e["type"] == "checkpoint"]
        if steps:
            return steps[0]
        assert job.state == "running", (job.logs_dir / "runner.log").read_text(errors="replace")[-4000:]
        time.sleep(0.1)
    raise AssertionError("no checkpoint in time")


def test_launch_argv_is_an_argument_list_with_the_accelerate_flags(tmp_path: Path) -> None:
    argv = launch.launch_argv(tmp_path / "job x; rm -rf /", num_processes=2, mixed_precision="bf16", port=29555,
                              resume=True, python="/usr/bin/python3")
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert argv[:3] == ["/usr/bin/python3", "-m", "accelerate.commands.launch"]
    pairs = dict(zip(argv[3:], argv[4:], strict=False))
    assert "--multi_gpu" in argv and "--cpu" not in argv  # --cpu would start one process only
    assert pairs["--num_processes"] == "2" and pairs["--num_machines"] == "1"
    assert pairs["--mixed_precision"] == "bf16" and pairs["--main_process_port"] == "29555"
    assert pairs["--main_process_ip"] == "127.0.0.1"
    # the hostile-looking folder stays one argument, after the module it belongs to
    assert argv[argv.index("-m", 3) + 1] == launch.LAUNCH_MODULE
    assert argv[argv.index("--job-dir") + 1] == str(tmp_path / "job x; rm -rf /")
    assert argv[-1] == "--resume"
    assert "--resume" not in launch.launch_argv(tmp_path, num_processes=2, mixed_precision="no", port=1)
    with pytest.raises(Exception, match="unknown mixed precision"):
        launch.launch_argv(tmp_path, num_processes=2, mixed_precision="fp64", port=1)


def test_preflight_wants_that_many_gpus_unless_cpu_test_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              planted: Path, tiny_model_dir: Path) -> None:
    monkeypatch.delenv(launch.ALLOW_CPU_ENV, raising=False)
    monkeypatch.setattr(launch, "cuda_device_count", lambda: 0)
    job = _job(tmp_path, planted, tiny_model_dir)
    backend = get_backend("native", None, num_processes=2)
    assert isinstance(backend, NativeBackend) and backend.num_processes == 2
    problems = [p for p in backend.preflight(job) if p.code == "not_enough_gpus"]
    assert len(problems) == 1 and "needs 2 CUDA GPUs, but this machine has 0" in problems[0].message
    assert launch.ALLOW_CPU_ENV in problems[0].hint
    with pytest.raises(Exception, match="needs 2 CUDA GPUs") as info:
        backend.run(job)
    assert info.value.diagnosis == "not_enough_gpus"
    assert job.events()[-1]["type"] == "error" and not list(job.outputs_dir.glob("*.safetensors"))
    monkeypatch.setattr(launch, "cuda_device_count", lambda: 4)
    assert launch.multiprocess_problems(4) == [] and launch.multiprocess_problems(0)[0].code == "bad_num_processes"
    monkeypatch.setattr(launch, "cuda_device_count", lambda: 0)
    monkeypatch.setenv(launch.ALLOW_CPU_ENV, "1")
    assert launch.multiprocess_problems(2) == []


def test_outcome_reads_the_main_rank_result_and_explains_a_silent_exit(tmp_path: Path, planted: Path,
                                                                        tiny_model_dir: Path) -> None:
    from devserver_lora.errors import BackendError

    job = _job(tmp_path, planted, tiny_model_dir)
    result = job.work_dir / launch.RESULT_FILE
    rank._write_result(job, status="done", path=str(job.outputs_dir / "magenta.safetensors"))
    assert launch._outcome(job, 0, stopped=False) == job.outputs_dir / "magenta.safetensors"
    rank._write_result(job, status="failed", message="the loss became nan at step 3", hint="lower it",
                         diagnosis="nan_loss")
    with pytest.raises(BackendError, match="nan at step 3") as info:
        launch._outcome(job, 1, stopped=False)
    assert info.value.diagnosis == "nan_loss" and info.value.hint == "lower it"
    rank._write_result(job, status="cancelled", message="training stopped at step 2 of 6")
    with pytest.raises(BackendError) as info:
        launch._outcome(job, 0, stopped=True)
    assert info.value.diagnosis == "cancelled"
    result.unlink()
    before = len(job.events())
    with pytest.raises(BackendError, match="exited with code -9 without reporting a result") as info:
        launch._outcome(job, -9, stopped=False)
    assert info.value.diagnosis == "native_crash" and "runner.log" in info.value.hint
    assert [e["type"] for e in job.events()[before:]] == ["error"]
    with pytest.raises(BackendError) as info:  # stopped by us and killed before it could answer: still a cancel
        launch._outcome(job, -9, stopped=True)
    assert info.value.diagnosis == "cancelled"


def test_rank_side_stop_file_and_read_only_job(tmp_path: Path, planted: Path, tiny_model_dir: Path) -> None:
    job = _job(tmp_path, planted, tiny_model_dir)
    stop = rank._StopFile(job.work_dir / launch.STOP_FILE)
    assert not stop.is_set()
    (job.work_dir / launch.STOP_FILE).write_text("stop\n")
    assert stop.is_set()
    other = rank._RankJob(job)
    before = len(job.events())
    other.append_event({"type": "log", "message": "from rank 1"})
    other.set_state("failed")
    assert len(job.events()) == before and job.state == "created"
    assert other.plan == job.plan and other.work_dir == job.work_dir


@pytest.mark.slow
def test_two_cpu_processes_through_the_runner_end_done_with_one_lora(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                     planted: Path, tiny_model_dir: Path) -> None:
    monkeypatch.setenv(launch.ALLOW_CPU_ENV, "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    job = _job(tmp_path, planted, tiny_model_dir)
    runner.start(job, _settings(tmp_path), backend="native", num_processes=2)
    try:
        state = runner.wait(job, timeout_s=180)
    finally:  # a failed or stuck run must not outlive the test
        for pid in _tree(job.info.get("pid") or 0):
            os.kill(pid, signal.SIGKILL)
    log = (job.logs_dir / "runner.log").read_text(errors="replace")
    assert state == "done", log[-4000:]
    events = job.events()
    # one event per step and per checkpoint: only the main process writes
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(1, 7))
    assert [(e["step"], Path(e["path"]).name) for e in events if e["type"] == "checkpoint"] == [
        (2, "magenta-step00000002.safetensors"), (4, "magenta-step00000004.safetensors")]
    assert len([e for e in events if e["type"] == "done"]) == 1
    # two ranks split each epoch: 4 images, batch 1 -> 2 steps per epoch each
    assert any(e["type"] == "log" and e["message"].startswith("training in 2 processes (MULTI_CPU), 2 steps per epoch")
               for e in events), [e for e in events if e["type"] == "log"]
    assert len([e for e in events if e["type"] == "log" and e["message"].startswith("encoding")]) == 1
    names = sorted(p.name for p in job.outputs_dir.iterdir())
    assert names == ["magenta-step00000002.safetensors", "magenta-step00000004.safetensors", "magenta.safetensors"]
    assert job.info["lora_path"] == str(job.outputs_dir / "magenta.safetensors")
    assert [e["state"] for e in events if e["type"] == "state"] == ["created", "running", "done"]


@pytest.mark.slow
def test_cancel_keeps_checkpoints_resume_continues_and_no_process_is_left(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, planted: Path, tiny_model_dir: Path) -> None:
    monkeypatch.setenv(launch.ALLOW_CPU_ENV, "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    job = _job(tmp_path, planted, tiny_model_dir, max_train_steps=100000, save_every_n_steps=2)
    settings = _settings(tmp_path)
    runner.start(job, settings, backend="native", num_processes=2)
    seen: set[int] = set()
    try:
        _wait_for_checkpoint(job)
        seen = _tree(job.info["pid"])
        assert len(seen) >= 4, seen  # worker, launcher, two ranks
        # 1. cancel: the ranks agree to stop, the main one saves its state, everything exits
        assert runner.cancel(job, grace_s=60) == "cancelled"
        assert _gone(seen, 15), _tree(min(seen))
        events = job.events()
        saved = [e["step"] for e in events if e["type"] == "checkpoint"]
        assert saved and all(s % 2 == 0 for s in saved) and len(saved) == len(set(saved))
        assert not (job.outputs_dir / "magenta.safetensors").exists()
        assert job.info["diagnosis"] == "cancelled" and events[-1]["state"] == "cancelled"

        # 2. resume in two processes continues from the step the main process saved when it stopped
        runner.start(job, settings, backend="native", num_processes=2, resume=True)
        _wait_for_checkpoint(job, after_event=len(events))
        after = job.events()[len(events):]
        resumed_at = [int(e["message"].split()[3]) for e in after if e["type"] == "log" and "resumed at step" in e["message"]]
        assert len(resumed_at) == 1 and resumed_at[0] >= saved[-1], (resumed_at, saved)
        progress = [e["step"] for e in after if e["type"] == "progress"]
        assert progress[0] == resumed_at[0] + 1 and progress == sorted(set(progress))

        # 3. the launcher dies hard (what cancel's last resort does): the ranks follow it, the job fails clearly
        seen = _tree(job.info["pid"])
        os.kill(job.info["child_pid"], signal.SIGKILL)
        assert runner.wait(job, timeout_s=60) == "failed"
        assert job.info["diagnosis"] == "native_crash" and "without reporting a result" in job.info["message"]
        assert _gone(seen - {job.info["pid"]}, 15), _tree(min(seen))
    finally:  # whatever a failed assertion left running
        for pid in (seen | _tree(job.info.get("pid") or 0)) & set(_processes()):
            os.kill(pid, signal.SIGKILL)
