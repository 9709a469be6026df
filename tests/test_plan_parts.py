"""The parts `make_plan` is made of, each held to its own contract (issue 10 item 14).

`make_plan` only orders them; tests/test_plan.py holds the whole. Here: the step arithmetic, the
accumulation that keeps the effective batch, the mixed precision per card, and the final validation
(warm-up shortened, saving at least once per run, invalid settings refused with their path).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devserver_lora.errors import PlanError
from devserver_lora.train.gpu import GpuInfo
from devserver_lora.train.plan import (
    Hyperparameters,
    StepSchedule,
    _final_hyperparameters,
    accumulation_for,
    mixed_precision_for,
    step_schedule,
)

# --- step arithmetic ------------------------------------------------------------------------------


def test_steps_aim_at_the_preset_target_by_whole_epochs():
    # 40 images x 5 repeats / batch 2 = 100 steps per epoch; 1000 target steps -> 10 epochs.
    s = step_schedule(40, 5, 2, 1, 1000)
    assert s == StepSchedule(steps_per_epoch=100, epochs=10, max_steps=1000, explanation=s.explanation)
    assert s.explanation.startswith("10 epochs x 100 steps = 1000 steps: 40 images x 5 repeats / batch 2")
    # Accumulation divides the optimizer steps, rounding partial steps up at each stage.
    assert step_schedule(7, 1, 2, 3, 10).steps_per_epoch == 2  # ceil(ceil(7/2)/3) = ceil(4/3)
    # A target below one epoch still trains one.
    assert step_schedule(40, 5, 1, 1, 10).epochs == 1


def test_explicit_steps_win_over_epochs_and_round_epochs_up():
    s = step_schedule(10, 1, 1, 1, 1000, steps=25, epochs=7)
    assert (s.steps_per_epoch, s.epochs, s.max_steps) == (10, 3, 25)
    assert s.explanation == "25 steps as requested (3 epochs of 10 steps)"
    e = step_schedule(10, 1, 1, 1, 1000, epochs=4)
    assert (e.epochs, e.max_steps) == (4, 40)
    assert e.explanation == "4 epochs as requested = 40 steps"


@settings(deadline=None)  # a loaded shared machine must not fail an arithmetic test on time
@given(
    n=st.integers(1, 500),
    repeats=st.integers(1, 50),
    batch=st.integers(1, 16),
    accumulation=st.integers(1, 16),
    target=st.integers(1, 20000),
)
def test_schedule_covers_every_image_and_never_trains_zero_steps(n, repeats, batch, accumulation, target):
    s = step_schedule(n, repeats, batch, accumulation, target)
    assert s.steps_per_epoch >= 1 and s.epochs >= 1
    assert s.max_steps == s.epochs * s.steps_per_epoch
    # One epoch's optimizer steps see every repeated image at least once.
    assert s.steps_per_epoch * batch * accumulation >= n * repeats


# --- memory search's batch ------------------------------------------------------------------------


def test_accumulation_keeps_the_effective_batch_when_memory_shrinks_the_batch():
    hyper = Hyperparameters(batch_size=4, gradient_accumulation_steps=2)
    assert accumulation_for(hyper, 4) == (2, None)
    accumulation, note = accumulation_for(hyper, 1)
    assert accumulation == 8 and 1 * accumulation == 4 * 2
    assert note == "batch size 1 with 8 accumulation steps: same effective batch (8) in less memory"


def test_mixed_precision_follows_the_card():
    assert mixed_precision_for(None)[0] == "no"
    assert mixed_precision_for(GpuInfo(name="RTX 4090", vram_gb=24, compute_capability="8.9")) == ("bf16", None)
    mode, note = mixed_precision_for(GpuInfo(name="Tesla T4", vram_gb=16, compute_capability="7.5"))
    assert mode == "fp16" and note is not None and "Tesla T4 (compute 7.5) has no bf16" in note


# --- final validation -----------------------------------------------------------------------------


def test_final_hyperparameters_take_the_schedule_and_shorten_an_endless_warmup():
    hyper = Hyperparameters(max_train_steps=10**6, lr_warmup_steps=500, save_every_n_epochs=10)
    schedule = step_schedule(10, 1, 1, 1, 1000, steps=40)  # 4 epochs
    final = _final_hyperparameters(hyper, 1, 1, schedule)
    assert (final.max_train_steps, final.epochs, final.batch_size) == (40, 4, 1)
    assert final.lr_warmup_steps == 4  # a tenth of the run, not a warm-up that never ends
    assert final.save_every_n_epochs == 4  # at least one save before the end


def test_final_hyperparameters_refuse_with_the_setting_s_path():
    hyper = Hyperparameters(max_train_steps=10**6)
    with pytest.raises(PlanError) as exc:
        _final_hyperparameters(hyper, 100, 1, step_schedule(10, 1, 100, 1, 10))  # batch 100 > 64
    assert [p.path for p in exc.value.problems] == ["$.hyper.batch_size"]



def test_whole_epochs_round_requested_steps_up_to_an_epoch_end():
    s = step_schedule(10, 1, 1, 1, 1000, steps=25, whole_epochs=True)
    assert (s.epochs, s.max_steps) == (3, 30)
    assert "30 steps: the 25 requested, rounded up to 3 whole epochs of 10 steps" in s.explanation
    assert step_schedule(10, 1, 1, 1, 1000, steps=25).max_steps == 25
    exact = step_schedule(10, 1, 1, 1, 1000, steps=30, whole_epochs=True)
    assert exact.max_steps == 30 and "rounded" not in exact.explanation
    assert step_schedule(10, 1, 1, 1, 1000, steps=0, whole_epochs=True).max_steps == 0  # refused by validation
