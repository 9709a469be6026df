"""The progress parser against the four recorded sd-scripts logs, and the diagnosis of every known failure."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
from conftest import KOHYA_FIXTURES

from devserver_lora.train.kohya import progress as kp
from devserver_lora.train.kohya.diagnose import Watcher, diagnose, lower_memory_hint


def items(name: str, kind):
    text = (KOHYA_FIXTURES / name).read_text(encoding="utf-8")
    return [i for i in kp.parse_text(text) if isinstance(i, kind)]


def test_run_log_steps_epochs_checkpoints():
    steps = items("run_log.txt", kp.StepLine)
    assert [s.step for s in steps] == [0, 1, 2, 3, 4, 4]
    assert {s.total for s in steps} == {4}
    assert [s.loss for s in steps[1:5]] == [2.32, 2.36, 2.32, 2.24]
    assert steps[0].loss is None and steps[0].eta_s is None
    assert [(e.epoch, e.total) for e in items("run_log.txt", kp.EpochLine)] == [(1, 2), (2, 2)]
    assert [c.path for c in items("run_log.txt", kp.CheckpointLine)] == [
        "/srv/sd3tiny/out/tiny_sd3_lora-000001.safetensors", "/srv/sd3tiny/out/tiny_sd3_lora.safetensors"]
    assert len(items("run_log.txt", kp.ModelSavedLine)) == 1
    totals = items("run_log.txt", kp.TotalsLine)
    assert any(t.total_steps == 4 for t in totals) and any(t.total_epochs == 2 for t in totals)


def test_step_checkpoints_and_slow_rates():
    paths = [c.path.rsplit("/", 1)[1] for c in items("run_log_simple_dirs.txt", kp.CheckpointLine)]
    assert paths == ["tiny_sd3_lora-step00000002.safetensors", "tiny_sd3_lora-step00000004.safetensors",
                     "tiny_sd3_lora-step00000006.safetensors", "tiny_sd3_lora.safetensors"]
    te = items("run_log_te_lora.txt", kp.StepLine)
    slow = [s for s in te if s.step == 1 and s.loss == 2.32][0]
    assert slow.it_per_s == pytest.approx(1 / 1.68) and slow.elapsed_s == 1.0 and slow.eta_s == 1.0


def test_resume_log_restarts_the_counter():
    resumed = items("run_log_resume.txt", kp.ResumedLine)
    assert resumed == [kp.ResumedLine(epoch=1, step=2)]
    steps = items("run_log_resume.txt", kp.StepLine)
    assert [s.step for s in steps] == [0, 1, 2, 2] and steps[1].total == 4


def test_chunked_feed_equals_whole_text():
    raw = (KOHYA_FIXTURES / "run_log.txt").read_text(encoding="utf-8")
    whole = kp.parse_text(raw)
    for size in (1, 7, 4096):
        splitter, got = kp.LineSplitter(), []
        for i in range(0, len(raw), size):
            got += [x for line in splitter.feed(raw[i:i + size]) if (x := kp.parse_line(line))]
        got += [x for line in splitter.flush() if (x := kp.parse_line(line))]
        assert got == whole, size


def test_nan_loss_and_durations():
    line = "steps:  50%|█████     | 2/4 [01:02:03<27:00:01,  1.50s/it, avr_loss=nan]"
    item = kp.parse_line(line)
    assert kp.is_nan(item.loss) and item.elapsed_s == 3723 and item.eta_s == 97201
    assert kp.parse_line("caching latents... 100%|██| 4/4 [00:01<00:00,  3.24it/s]") is None
    assert kp.parse_duration("?") is None


def _watch(*lines: str) -> Watcher:
    w = Watcher()
    for line in lines:
        w.feed(line)
    return w


PLAN = SimpleNamespace(
    hyper=SimpleNamespace(batch_size=2, optimizer="AdamW", resolution=1024, network_dim=16),
    memory=SimpleNamespace(gradient_checkpointing=True, cache_text_encoder_outputs=True, fp8_base=False,
                           use_8bit_optimizer=False, blocks_to_swap=0),
)


@pytest.mark.parametrize(
    ("lines", "returncode", "exists", "code"),
    [
        (["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"], 1, False, "cuda_oom"),
        (["RuntimeError: CUDA error: no kernel image is available for execution on the device"], 1, False, "cuda_arch"),
        (["ModuleNotFoundError: No module named 'bitsandbytes'"], 1, False, "bitsandbytes_missing"),
        (["voluptuous.error.MultipleInvalid: extra keys not allowed @ data['general']['x']"], 1, False,
         "dataset_toml_invalid"),
        (["sd3_train_network.py: error: unrecognized arguments: --foo"], 2, False, "bad_flag"),
        (["RuntimeError: Error(s) in loading state_dict for MMDiT:", "size mismatch for x"], 1, False,
         "model_mismatch"),
        (["No data found. Please verify arguments"], 0, False, "no_data"),
        (["model saved."], 0, False, "no_output"),
        (["ModuleNotFoundError: No module named 'toml'"], 1, False, "missing_module"),
        (["all fine"], -signal.SIGKILL, False, "killed"),
        (["all fine"], -signal.SIGTERM, False, "killed"),
        (["Traceback (most recent call last):", "ValueError: something new"], 1, False, "failed"),
    ],
)
def test_diagnoses(lines, returncode, exists, code):
    diag = diagnose(returncode=returncode, watcher=_watch(*lines), output_exists=exists, plan=PLAN)
    assert diag is not None and diag.code == code
    assert diag.hint and diag.message


def test_success_needs_exit_zero_and_the_file():
    assert diagnose(returncode=0, watcher=_watch("model saved."), output_exists=True) is None


def test_nan_loss_fails_even_with_a_file():
    w = _watch()
    w.loss(float("nan"))
    diag = diagnose(returncode=0, watcher=w, output_exists=True)
    assert diag.code == "nan_loss" and "learning rate" in diag.hint
    w.loss(2.0)  # recovered: the last loss decides
    assert diagnose(returncode=0, watcher=w, output_exists=True) is None


def test_oom_hint_names_the_next_lower_memory_setting():
    assert "fp8_base=true" in lower_memory_hint(PLAN)
    tighter = SimpleNamespace(hyper=PLAN.hyper, memory=SimpleNamespace(**{**vars(PLAN.memory), "fp8_base": True}))
    assert "batch_size=1" in lower_memory_hint(tighter)
    assert "SIGKILL" in diagnose(returncode=-9, watcher=_watch(), output_exists=False).hint
