"""Native backend training on tiny models: the loss falls, the job store gets the same events as with Kohya,
checkpoints are named like Kohya's, a killed run resumes exactly, and preflight explains what is missing."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import COMFY_FIXTURES
from safetensors import safe_open

from devserver_lora.errors import BackendError
from devserver_lora.lora.fit import predict_not_loaded
from devserver_lora.lora.keys import ArchSpec
from devserver_lora.train.card import load_card
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.native import NativeBackend, tiny
from devserver_lora.train.native.caches import TextEncoder, build_caches
from devserver_lora.train.native.loop import LoopSettings, LoraTrainer
from devserver_lora.train.native.models import ModelSource
from devserver_lora.train.native.objective import flow_loss, noisy_input, timesteps_for
from devserver_lora.train.plan import SCHEDULERS, make_plan

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH = ArchSpec.sd3(2, text_encoders=("clip_l",), name="tiny_sd3")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_planted_dataset(tmp_path_factory.mktemp("planted") / "ds", n=4, size=256)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_tiny_diffusers_model(tmp_path_factory.mktemp("tiny_model"))


def _caches(planted: Path):
    from devserver_lora.train.dataset.manifest import load_manifest

    return build_caches(
        load_manifest(planted), planted, resolution=256, flip=False, load_vae=tiny.tiny_vae,
        load_text_encoders=lambda: [TextEncoder("clip_l", tiny.tiny_clip_text_encoder(), tiny.tiny_clip_tokenizer())],
        joint_dim=4096, pooled_dim=2048, device="cpu", key="test",
    )


def _eval_loss(model, caches, seed: int = 123) -> float:
    """Loss on a fixed set of (noise, sigma) draws: comparable before and after training."""
    g = torch.Generator().manual_seed(seed)
    n = len(caches)
    sig = torch.linspace(0.2, 0.9, 4).repeat_interleave(n)
    lat = caches.latents.repeat(4, 1, 1, 1)
    noise = torch.randn(lat.shape, generator=g)
    with torch.no_grad():
        pred = model(hidden_states=noisy_input(lat, noise, sig), encoder_hidden_states=caches.context.repeat(4, 1, 1),
                     pooled_projections=caches.pooled.repeat(4, 1), timestep=timesteps_for(sig), return_dict=False)[0]
    return float(flow_loss(pred, lat, noise, sig, "none"))  # unweighted


def test_loss_falls_on_a_planted_concept(planted: Path) -> None:
    caches = _caches(planted)
    assert caches.latents.shape == (4, 16, 32, 32) and caches.context.shape == (4, 77, 4096)
    trainer = LoraTrainer(tiny.tiny_transformer(seed=0), caches, LoopSettings(total_steps=50, rank=4, alpha=4, learning_rate=1e-3, seed=7))
    before = _eval_loss(trainer.model, caches)
    losses: list[float] = []
    assert trainer.train(on_step=lambda r: losses.append(r.loss)) == 50
    after = _eval_loss(trainer.model, caches)
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    assert last < 0.95 * first, (first, last)
    assert after < 0.95 * before, (before, after)
    assert trainer.epoch == 12 and trainer.steps_per_epoch == 4


def test_stop_event_ends_between_steps_and_accumulation_counts_windows(planted: Path) -> None:
    caches = _caches(planted)
    s = LoopSettings(total_steps=6, rank=2, alpha=1, batch_size=1, gradient_accumulation_steps=3, seed=1)
    trainer = LoraTrainer(tiny.tiny_transformer(seed=0), caches, s)
    # 4 images, accumulation 3: windows of 3 and 1 micro-batches, so 2 optimizer steps per epoch.
    assert trainer.steps_per_epoch == 2
    stop = threading.Event()
    seen: list[tuple[int, int, bool]] = []

    def on_step(r) -> None:
        seen.append((r.step, r.epoch, r.epoch_finished))
        if r.step == 3:
            stop.set()

    assert trainer.train(on_step=on_step, stop=stop) == 3
    assert seen == [(1, 1, False), (2, 1, True), (3, 2, False)]


def _job(tmp_path: Path, planted: Path, **overrides):
    values = {"resolution": 256, "max_train_steps": 12, "learning_rate": 1e-3, "save_every_n_steps": 5}
    values.update(overrides)
    plan = make_plan("sd35_medium", "quick_test", planted, gpu=None, overrides=values, backend="native", output_name="magenta")
    return JobStore(tmp_path / "jobs").create(plan, card=load_card(planted / "card.json"))


def test_backend_run_writes_kohya_named_checkpoints_and_events(tmp_path: Path, planted: Path, tiny_model_dir: Path) -> None:
    job = _job(tmp_path, planted)
    backend = NativeBackend(None, source=ModelSource(diffusers_dir=tiny_model_dir, tiny_tokenizer=True))
    assert [p for p in backend.preflight(job) if p.severity == "error"] == []
    final = backend.run(job)
    assert final == job.outputs_dir / "magenta.safetensors"
    names = sorted(p.name for p in job.outputs_dir.glob("*.safetensors"))
    # 4 steps per epoch: epochs 1 and 2 end at steps 4 and 8, step checkpoints at 5 and 10; epoch 3 is the final file.
    assert names == ["magenta-000001.safetensors", "magenta-000002.safetensors", "magenta-step00000005.safetensors",
                     "magenta-step00000010.safetensors", "magenta.safetensors"]
    events = job.events()
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert steps == list(range(1, 13))
    checkpoints = [(e["step"], Path(e["path"]).name) for e in events if e["type"] == "checkpoint"]
    assert checkpoints == [(4, "magenta-000001.safetensors"), (5, "magenta-step00000005.safetensors"),
                           (8, "magenta-000002.safetensors"), (10, "magenta-step00000010.safetensors")]
    assert events[-1]["type"] == "done" and events[-1]["steps"] == 12 and events[-1]["lora_path"] == str(final)
    assert predict_not_loaded(final, TINY_ARCH) == []
    with safe_open(str(final), "pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["devserver_lora.trigger_words"]) == ["mgsq"]
    assert meta["devserver_lora.card.licence"] == "CC0-1.0"
    assert meta["ss_steps"] == "12"
    # Resuming a finished job trains nothing and writes no second copy (the caches on disk are reused).
    assert backend.run(job, resume=True) == final
    assert sorted(p.name for p in job.outputs_dir.glob("*.safetensors")) == names
    assert not any(e["type"] == "log" and e["message"].startswith("encoding") for e in job.events()[len(events):])


RESUME_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from devserver_lora.train.jobs import JobStore
    from devserver_lora.train.native import NativeBackend
    from devserver_lora.train.native.loop import LoraTrainer
    from devserver_lora.train.native.models import ModelSource

    jobs, job_id, model, resume = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1"
    slow = LoraTrainer._micro_step
    def paced(self, *a, **k):  # slow enough that the parent kills us mid-run
        time.sleep(0.15)
        return slow(self, *a, **k)
    if not resume:
        LoraTrainer._micro_step = paced
    job = JobStore(jobs).get(job_id)
    NativeBackend(None, source=ModelSource(diffusers_dir=model, tiny_tokenizer=True)).run(job, resume=resume)
    """
)


def _child(tmp_path: Path, job, model: Path, resume: bool) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(RESUME_CHILD, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), str(job.dir.parent), job.id, str(model), "1" if resume else "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killed_run_resumes_where_its_state_was_saved_and_ends_identical(tmp_path: Path, planted: Path, tiny_model_dir: Path) -> None:
    job = _job(tmp_path, planted, max_train_steps=20, save_every_n_steps=3, save_every_n_epochs=100)
    proc = _child(tmp_path, job, tiny_model_dir, resume=False)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(e["type"] == "checkpoint" for e in job.events()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    before = job.events()
    assert not any(e["type"] == "done" for e in before)
    saved = max(e["step"] for e in before if e["type"] == "checkpoint")
    killed_at = max(e["step"] for e in before if e["type"] == "progress")
    assert killed_at < 20

    proc = _child(tmp_path, job, tiny_model_dir, resume=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]
    after = job.events()[len(before):]
    assert any(e["type"] == "log" and f"resumed at step {saved} of 20" in e["message"] for e in after)
    steps = [e["step"] for e in after if e["type"] == "progress"]
    assert steps == list(range(saved + 1, 21))
    assert after[-1]["type"] == "done" and after[-1]["steps"] == 20

    # Same seed, no interruption: the resumed LoRA is the same LoRA (state, optimizer and RNG were all restored).
    fresh = _job(tmp_path / "fresh", planted, max_train_steps=20, save_every_n_steps=3, save_every_n_epochs=100)
    NativeBackend(None, source=ModelSource(diffusers_dir=tiny_model_dir, tiny_tokenizer=True)).run(fresh)
    with safe_open(after[-1]["lora_path"], "pt") as a, safe_open(str(fresh.outputs_dir / "magenta.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():  # noqa: SIM118
            assert torch.allclose(a.get_tensor(k).float(), b.get_tensor(k).float(), atol=1e-6), k


def test_preflight_explains_unsupported_family_and_missing_or_wrong_models(tmp_path: Path, planted: Path) -> None:
    job = _job(tmp_path, planted)
    codes = {p.code for p in NativeBackend(None).preflight(job)}
    assert "model_missing" in codes  # no source, no models_dir

    not_a_model = COMFY_FIXTURES / "loras" / "tiny_sd3_kohya.safetensors"
    problems = NativeBackend(None, source=ModelSource(checkpoint=not_a_model)).preflight(job)
    assert [p.code for p in problems] == ["model_not_sd3"]
    assert "model.diffusion_model" in problems[0].message

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    problems = NativeBackend(None, source=ModelSource(checkpoint=broken)).preflight(job)
    assert [p.code for p in problems] == ["model_unreadable"]

    plan = job.plan.model_copy(update={"family": "sdxl"})
    job.write_json("plan.json", plan)
    problems = NativeBackend(None).preflight(job)
    assert [p.code for p in problems] == ["native_unsupported_family"]
    with pytest.raises(BackendError, match="SD3.5 only"):
        NativeBackend(None).run(job)
    assert job.events()[-1]["type"] == "error"


def _lrs(make, steps: int = 12) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("warmup", [0, 3])
def test_native_schedules_are_the_ones_kohya_uses(name: str, warmup: int) -> None:
    """sd-scripts (train_util.get_scheduler_fix at the pin) builds every schedule with transformers'
    TYPE_TO_SCHEDULER_FUNCTION: warmup in optimizer steps, one cycle, power 1, and no warmup for "constant".
    The native backend must follow the same curve, step for step."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    from devserver_lora.train.native.loop import lr_scheduler

    def kohya(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        func = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
        if name == "constant":
            return func(opt)
        if name == "constant_with_warmup":
            return func(opt, num_warmup_steps=warmup)
        extra = {"num_cycles": 1} if name == "cosine_with_restarts" else {"power": 1.0} if name == "polynomial" else {}
        return func(opt, num_warmup_steps=warmup, num_training_steps=12, **extra)

    assert _lrs(lambda opt: lr_scheduler(name, opt, warmup, 12)) == pytest.approx(_lrs(kohya), abs=1e-9)


def test_schedule_resumes_where_it_stopped_and_unknown_names_are_refused() -> None:
    from devserver_lora.train.native.loop import lr_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_scheduler("cosine", opt, 2, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    saved = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = lr_scheduler("cosine", opt2, 2, 10)
    resumed.load_state_dict(saved)
    for _ in range(3):
        sched.step()
        resumed.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert 0 < opt.param_groups[0]["lr"] < 1
    for name in ("warp", "piecewise_constant"):
        with pytest.raises(BackendError, match=f"no learning-rate scheduler {name!r}"):
            lr_scheduler(name, opt, 0, 10)


def test_augmentations_and_checkpointing_paths_train(planted: Path) -> None:
    """Flip augmentation, caption dropout and gradient checkpointing all run (and change nothing about the API)."""
    from devserver_lora.train.dataset.manifest import load_manifest

    caches = build_caches(
        load_manifest(planted), planted, resolution=256, flip=True, load_vae=tiny.tiny_vae,
        load_text_encoders=lambda: [TextEncoder("clip_l", tiny.tiny_clip_text_encoder(), tiny.tiny_clip_tokenizer())],
        joint_dim=4096, pooled_dim=2048, device="cpu", key="aug",
    )
    assert caches.latents_flipped is not None and caches.empty_context.shape == (1, 77, 4096)
    assert not torch.allclose(caches.latents_flipped, caches.latents)
    s = LoopSettings(total_steps=3, rank=2, alpha=2, flip_aug=True, caption_dropout_rate=0.5, gradient_checkpointing=True,
                     lr_scheduler="cosine", lr_warmup_steps=1)
    losses: list[float] = []
    assert LoraTrainer(tiny.tiny_transformer(), caches, s).train(on_step=lambda r: losses.append(r.loss)) == 3
    assert all(x == x for x in losses)  # no NaN
