"""Families, presets, hyperparameter validation, GPU detection input, and plans that fit the card."""

from __future__ import annotations

import json

import pytest
from datasets import CARD

from devserver_lora.errors import DatasetError, PlanError
from devserver_lora.train.card import DatasetCard
from devserver_lora.train.dataset.manifest import DatasetManifest, ManifestImage
from devserver_lora.train.families import FAMILIES, get_family
from devserver_lora.train.gpu import gpu_from_vram, lookup_gpu, parse_nvidia_smi, resolve_gpu
from devserver_lora.train.memory import Choice, Workload, estimate
from devserver_lora.train.plan import Hyperparameters, TrainingPlan, backend_support_problems, make_plan
from devserver_lora.train.presets import CLASSROOM_PRESETS, get_preset, load_presets
from devserver_lora.train.settings import load_settings


def fake_dataset(folder, n=40, *, card=True, consent="yes"):
    """A manifest-only dataset (plans never read the pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [
        ManifestImage(file=f"5_adire/{i:016x}.png", caption_file=f"5_adire/{i:016x}.txt", sha256=f"{i:064x}",
                      source_sha256=f"{i:064x}", width=1024, height=1024, source_mode="RGB",
                      caption="adire, cloth", dhash=f"{i:016x}", source=f"{i}.png")
        for i in range(n)
    ]
    manifest = DatasetManifest(name="adire", trigger="adire", repeats=5, subset_dir="5_adire", resize="fit",
                               images=images)
    (folder / "dataset.json").write_text(manifest.model_dump_json())
    if card:
        DatasetCard(**{**CARD, "consent": consent}).write(folder / "card.json")
    return folder


@pytest.fixture
def ds(tmp_path):
    return fake_dataset(tmp_path / "ds")


# --- families, presets, GPUs ----------------------------------------------------------------------


def test_families_and_unknown_family():
    assert list(FAMILIES) == ["sd35_large", "sd35_medium", "sdxl", "sd15", "flux_dev"]
    assert get_family("sd35_large").kohya_network_module == "networks.lora_sd3"
    assert get_family("sdxl").kohya_script == "sdxl_train_network.py"
    assert get_family("flux_dev").caption_token_limit is None
    with pytest.raises(PlanError) as exc:
        get_family("sd4")
    assert "sd35_large" in exc.value.hint


def test_presets_are_data_with_both_languages():
    presets = load_presets()
    assert set(presets) == {"quick_test", *CLASSROOM_PRESETS}
    assert presets["fotostudio"].label_de == "Fotostudio – Schnellstart"
    assert presets["atelier"].label_de == "Atelier – Detailtreue"
    assert presets["galerie"].label_de == "Galerie – Feinabstimmung"
    assert (presets["fotostudio"].min_images, presets["fotostudio"].max_images) == (10, 30)
    assert (presets["atelier"].min_images, presets["atelier"].max_images) == (30, 75)
    assert (presets["galerie"].min_images, presets["galerie"].max_images) == (75, 150)
    assert presets["galerie"].min_vram_gb == 16 and presets["galerie"].hyper["train_text_encoder"]
    assert presets["fotostudio"].hyper["resolution"] == 512
    # Atelier: more steps, lower learning rate, higher rank than Fotostudio.
    f, a = presets["fotostudio"], presets["atelier"]
    assert a.target_steps > f.target_steps and a.hyper["learning_rate"] < f.hyper["learning_rate"]
    assert a.hyper["network_dim"] > f.hyper["network_dim"]
    for p in presets.values():
        assert p.explanation_de and p.explanation_en
        Hyperparameters.model_validate({**p.hyper, "max_train_steps": p.target_steps})  # shipped presets are valid
    with pytest.raises(PlanError, match="unknown preset"):
        get_preset("museum")


def test_gpu_lookup_and_nvidia_smi_parsing():
    assert lookup_gpu("NVIDIA GeForce RTX 5090").compute_capability == "12.0"
    assert lookup_gpu("rtx 4060 ti").vram_gb == 16
    with pytest.raises(PlanError, match="--vram"):
        lookup_gpu("Voodoo 2")
    gpus = parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564, 8.9\nNVIDIA GeForce RTX 4090, 24564, 8.9\n")
    assert len(gpus) == 2 and gpus[0].vram_gb == 24.0 and gpus[0].compute_capability == "8.9"
    assert parse_nvidia_smi("garbage\n") == []
    assert resolve_gpu(vram=24, gpu="RTX 3090").compute_capability == "8.6"
    assert resolve_gpu(detect=False) is None
    with pytest.raises(PlanError):
        gpu_from_vram(0.1)


def test_settings_precedence(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.json").write_text(json.dumps({"kohya_dir": "/from/file", "models_dir": "/models/file"}))
    monkeypatch.setenv("DEVSERVER_LORA_HOME", str(home))
    monkeypatch.setenv("KOHYA_DIR", "/from/env")
    monkeypatch.delenv("DEVSERVER_LORA_MODELS", raising=False)
    s = load_settings()
    assert s.home == home and s.jobs_dir == home / "jobs"
    assert str(s.kohya_dir) == "/from/env" and str(s.models_dir) == "/models/file"
    assert str(load_settings(kohya_dir="/from/flag").kohya_dir) == "/from/flag"


# --- hyperparameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("resolution", 1000, "multiple of 64: use 960 or 1024"),
        ("resolution", 128, "outside 256-1536"),
        ("learning_rate", 0.5, "outside 1e-6 to 1e-2"),
        ("learning_rate", 1e-8, "outside 1e-6 to 1e-2"),
        ("max_train_steps", 0, "at least 1"),
        ("network_dim", 512, "outside 1-256"),
        ("network_alpha", 100, "at most 4 x rank"),
        ("optimizer", "SGD", "choose one of AdamW"),
        ("lr_scheduler", "warp", "choose one of constant"),
        ("caption_dropout_rate", 1.5, "between 0 and 1"),
    ],
)
def test_hyperparameters_explain_what_to_do(ds, field, value, words):
    with pytest.raises(PlanError) as exc:
        make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(24), overrides={field: value})
    text = str(exc.value)
    assert words in text and field in text


def test_unknown_override_is_refused(ds):
    with pytest.raises(PlanError, match="unknown setting 'learnrate'"):
        make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(24), overrides={"learnrate": 1e-4})


def test_backend_support():
    h = Hyperparameters(optimizer="Prodigy", lr_scheduler="cosine_with_restarts")
    codes = {p.code for p in backend_support_problems(h, "native")}
    assert codes == {"unsupported_optimizer"}  # every schedule is diffusers' get_scheduler in both backends
    assert backend_support_problems(h, "kohya") == []
    te = Hyperparameters(train_text_encoder=True)
    assert [p.code for p in backend_support_problems(te, "native")] == ["unsupported_text_encoder_training"]


def test_native_backend_limits_are_refused_at_plan_time(ds):
    with pytest.raises(PlanError, match="native backend cannot train Stable Diffusion XL"):
        make_plan("sdxl", "atelier", ds, gpu=gpu_from_vram(24), backend="native")
    plan = make_plan("sd35_medium", "atelier", ds, gpu=gpu_from_vram(24), backend="native")
    assert not plan.memory.fp8_base and plan.memory.blocks_to_swap == 0 and plan.backend == "native"
    # At 16 GB the kohya backend fits (fp8 base) but the native one does not, and says what would.
    assert make_plan("sd35_medium", "atelier", ds, gpu=gpu_from_vram(16)).memory.fp8_base
    with pytest.raises(PlanError) as exc:
        make_plan("sd35_medium", "atelier", ds, gpu=gpu_from_vram(16), backend="native")
    assert "--set resolution=768" in str(exc.value)
    # ... and the suggestion holds.
    smaller = make_plan("sd35_medium", "atelier", ds, gpu=gpu_from_vram(16), backend="native",
                        overrides={"resolution": 768})
    assert smaller.hyper.resolution == 768 and not smaller.memory.fp8_base


# --- plans ----------------------------------------------------------------------------------------


def _mem(plan: TrainingPlan) -> tuple:
    m = plan.memory
    return (m.gradient_checkpointing, m.fp8_base, m.use_8bit_optimizer, m.blocks_to_swap > 0, plan.hyper.batch_size)


def test_plans_for_16_24_32_80_gb_differ_as_documented(ds):
    """memory.py docstring: SD3.5 Large, Atelier, 1024 px."""
    plans = {v: make_plan("sd35_large", "atelier", ds, gpu=gpu_from_vram(v)) for v in (12, 16, 24, 32, 80)}
    #                     ckpt   fp8    8bit   swap   batch
    assert _mem(plans[80]) == (False, False, False, False, 2)
    assert _mem(plans[32]) == (True, False, False, False, 2)
    assert _mem(plans[24]) == (True, False, True, False, 1)
    assert _mem(plans[16]) == (True, True, False, False, 1)
    assert plans[12].memory.blocks_to_swap > 0 and plans[12].memory.fp8_base
    for v, p in plans.items():
        assert p.memory.estimated_peak_vram_gb <= v - p.memory.margin_gb
        assert p.memory.vram_gb == v
        # Smaller batches keep the effective batch through accumulation.
        assert p.hyper.batch_size * p.hyper.gradient_accumulation_steps == 2
        assert len(p.explanations) >= 6
    assert len({_mem(p) for p in plans.values()}) == 5
    # Slower measures cost time: 80 GB is the fastest plan.
    assert plans[80].memory.estimated_wall_time_s < plans[12].memory.estimated_wall_time_s
    assert any("fp8 base model" in e for e in plans[16].explanations)
    assert any("swapped to host RAM" in e for e in plans[12].explanations)


def test_what_cannot_fit_is_refused_with_what_would(ds):
    with pytest.raises(PlanError) as exc:
        make_plan("sd35_large", "atelier", ds, gpu=gpu_from_vram(8))
    msg = str(exc.value)
    # SDXL needs about 11 GB even with every saving (its published budget is 16-20 GB): SD1.5 at 512 px fits.
    assert "does not fit" in msg and "--family sd15" in msg and "at least 11 GB" in msg and "caching" in msg
    # The native backend cannot swap blocks or use fp8: 12 GB is too small for it.
    with pytest.raises(PlanError, match="does not fit"):
        make_plan("sd35_large", "atelier", ds, gpu=gpu_from_vram(12), backend="native")
    with pytest.raises(PlanError, match="at least 16 GB"):
        make_plan("sd35_large", "galerie", ds, gpu=gpu_from_vram(12))


def test_galerie_trains_text_encoders(tmp_path):
    ds = fake_dataset(tmp_path / "big", n=100)
    plan = make_plan("sd35_large", "galerie", ds, gpu=gpu_from_vram(48))
    assert plan.hyper.train_text_encoder and plan.hyper.text_encoder_lr == 1e-5
    assert not plan.memory.cache_text_encoder_outputs
    assert any("text encoders" in e for e in plan.explanations)


def test_steps_epochs_and_round_trip(ds, tmp_path):
    plan = make_plan("sd35_medium", "fotostudio", ds, gpu=gpu_from_vram(24), output_name="Adire Muster!")
    h = plan.hyper
    assert plan.output_name == "Adire_Muster"
    assert plan.steps_per_epoch == 40 * 5 // (h.batch_size * h.gradient_accumulation_steps)
    assert h.max_train_steps == h.epochs * plan.steps_per_epoch
    assert abs(h.max_train_steps - get_preset("fotostudio").target_steps) <= plan.steps_per_epoch
    assert h.discrete_flow_shift == 3.0 and h.mixed_precision == "bf16" and h.keep_tokens == 1
    assert TrainingPlan.model_validate_json(plan.model_dump_json()) == plan
    fixed = make_plan("sd35_medium", "fotostudio", ds, gpu=gpu_from_vram(24), overrides={"max_train_steps": 77},
                      backend="native")
    assert fixed.hyper.max_train_steps == 77
    sdxl = make_plan("sdxl", "atelier", ds, gpu=gpu_from_vram(24))
    assert sdxl.hyper.weighting_scheme == "uniform" and sdxl.hyper.discrete_flow_shift is None


def test_cpu_plan_and_old_gpu(ds):
    # sd3_train_network.py load_target_model loads every part in the mixed-precision dtype, also on the CPU: bf16
    # halves the host RAM (issue 12 item 4); the UNet scripts load in fp32 whatever the precision, so "no" there.
    cpu = make_plan("sd35_medium", "quick_test", ds, gpu=None)
    assert cpu.gpu is None and cpu.hyper.mixed_precision == "bf16" and cpu.memory.vram_gb is None
    assert any("bf16 on the CPU" in e for e in cpu.explanations)
    assert make_plan("sd15", "quick_test", ds, gpu=None).hyper.mixed_precision == "no"
    t4 = make_plan("sd35_medium", "quick_test", ds, gpu=lookup_gpu("T4"))
    assert t4.hyper.mixed_precision == "fp16"


def test_memory_overrides_are_respected(ds):
    plan = make_plan("sd35_large", "atelier", ds, gpu=gpu_from_vram(80), overrides={"gradient_checkpointing": True})
    assert plan.memory.gradient_checkpointing


def test_card_is_required_and_consent_checked(tmp_path):
    with pytest.raises(DatasetError, match="no dataset card"):
        make_plan("sd35_large", "fotostudio", fake_dataset(tmp_path / "a", card=False), gpu=gpu_from_vram(24))
    with pytest.raises(DatasetError) as exc:
        make_plan("sd35_large", "fotostudio", fake_dataset(tmp_path / "b", consent="no"), gpu=gpu_from_vram(24))
    assert exc.value.problems[0].code == "card_no_consent"
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        make_plan("sd35_large", "fotostudio", tmp_path, gpu=gpu_from_vram(24))


def test_each_memory_measure_lowers_the_estimate():
    work = Workload(family=get_family("sd35_large"), resolution=1024, batch_size=2, network_dim=32, optimizer="AdamW",
                    train_text_encoder=False, num_images=40, steps=1000)
    base = estimate(work, Choice(batch_size=2)).train_gb
    for choice in (Choice(batch_size=1), Choice(batch_size=2, gradient_checkpointing=True),
                   Choice(batch_size=2, use_8bit_optimizer=True), Choice(batch_size=2, fp8_base=True),
                   Choice(batch_size=2, blocks_to_swap=10)):
        assert estimate(work, choice).train_gb < base, choice
    # Resolution and rank raise it.
    bigger = Workload(**{**work.__dict__, "resolution": 1536})
    assert estimate(bigger, Choice(batch_size=2)).train_gb > base


def test_detect_gpu_runs_nvidia_smi_with_arguments(tmp_path, monkeypatch):
    """A stand-in nvidia-smi on PATH prints what the real one prints for a 5090; we parse it."""
    from devserver_lora.train.gpu import detect_gpu

    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'test "$1" = "--query-gpu=name,memory.total,compute_cap" || exit 3\n'
        'test "$2" = "--format=csv,noheader,nounits" || exit 4\n'
        'echo "NVIDIA GeForce RTX 5090, 32607, 12.0"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    gpu = detect_gpu()
    assert gpu is not None and gpu.name == "NVIDIA GeForce RTX 5090" and gpu.compute_capability == "12.0"
    assert gpu.vram_gb == 31.8 and gpu.relative_speed == lookup_gpu("RTX 5090").relative_speed
    assert gpu.source == "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 9\n")  # a broken driver: no GPU from nvidia-smi, and torch has no CUDA here
    assert detect_gpu() is None or detect_gpu().source == "torch"


def test_family_arch_names_exist_in_loras():
    from devserver_lora.lora.fit import ARCHS

    assert all(f.arch in ARCHS for f in FAMILIES.values())


# ----------------------------------------------------------------------------- issue 12 item 1
@pytest.mark.parametrize("setting", [{"caption_dropout_rate": 0.05}, {"shuffle_caption": True}])
@pytest.mark.parametrize("backend", ["kohya", None])
def test_caption_dropout_or_shuffling_with_cached_encoder_outputs_is_refused(ds, setting, backend):
    # sd-scripts asserts at start-up when text-encoder outputs are cached and captions vary (sd3_train_network.py
    # Sd3NetworkTrainer.assert_extra_args); the plan caches them whenever the encoders are frozen.
    with pytest.raises(PlanError) as exc:
        make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(24), overrides=setting, backend=backend)
    err = exc.value
    assert "cannot be used while the text-encoder outputs are cached" in err.message
    assert "when caching Text Encoder output" in err.message  # sd-scripts' own words
    assert "--set caption_dropout_rate=0 --set shuffle_caption=false" in err.hint
    assert "--set cache_text_encoder_outputs=false" in err.hint
    assert [p.code for p in err.problems] == ["caption_vs_text_encoder_cache"]


def test_caption_dropout_with_the_cache_turned_off_is_planned_with_its_memory(ds):
    cached = make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(80), backend="kohya")
    plan = make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(80), backend="kohya",
                     overrides={"caption_dropout_rate": 0.05, "cache_text_encoder_outputs": False})
    assert plan.hyper.caption_dropout_rate == 0.05 and not plan.memory.cache_text_encoder_outputs
    # the encoders stay on the GPU: T5-XXL alone is 4.7 B parameters, about 8.8 GB in 16 bits
    assert plan.memory.breakdown_gb["weights"] - cached.memory.breakdown_gb["weights"] > 9
    assert any("cache_text_encoder_outputs=false as requested" in e for e in plan.explanations)
    assert backend_support_problems(plan.hyper, "kohya", plan.memory) == []
    with pytest.raises(PlanError, match="true or false"):
        make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(80), overrides={"cache_text_encoder_outputs": 3})


def test_the_native_backend_keeps_caption_dropout_with_its_cache(ds):
    plan = make_plan("sd35_medium", "fotostudio", ds, gpu=gpu_from_vram(24), backend="native",
                     overrides={"caption_dropout_rate": 0.05})
    assert plan.hyper.caption_dropout_rate == 0.05 and plan.memory.cache_text_encoder_outputs


def test_the_dropout_message_no_longer_calls_dropout_typical(ds):
    with pytest.raises(PlanError) as exc:
        make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(24), overrides={"caption_dropout_rate": 1.5})
    assert "typical" not in str(exc.value) and "sd-scripts refuses any caption dropout" in str(exc.value)


def test_sd15_plans_no_text_encoder_cache(ds):
    # train_network.py (SD1.5) has no text-encoder output cache: the plan must not claim one, nor refuse dropout.
    plan = make_plan("sd15", "fotostudio", ds, gpu=gpu_from_vram(24), backend="kohya",
                     overrides={"caption_dropout_rate": 0.05})
    assert not plan.memory.cache_text_encoder_outputs



def test_plans_that_may_run_on_kohya_end_at_an_epoch_end(ds):
    """sd-scripts restarts its step count in each attempt and resumes at epoch starts (issue 12 item 2): a Kohya
    plan asked for steps off an epoch end is rounded up to it and says why, so every resumed run ends as planned."""
    native = make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(80), backend="native",
                       overrides={"max_train_steps": 1001})
    kohya = make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(80), backend="kohya",
                      overrides={"max_train_steps": 1001})
    either = make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(80), overrides={"max_train_steps": 1001})
    per_epoch = kohya.steps_per_epoch
    assert native.hyper.max_train_steps == 1001 and 1001 % per_epoch
    assert kohya.hyper.max_train_steps == either.hyper.max_train_steps == -(-1001 // per_epoch) * per_epoch
    assert kohya.hyper.max_train_steps == kohya.hyper.epochs * per_epoch
    assert not any("rounded up" in e for e in native.explanations)
    assert any(f"the 1001 requested, rounded up to {kohya.hyper.epochs} whole epochs" in e and "--backend native" in e
               for e in kohya.explanations)
    whole = make_plan("sd35_large", "fotostudio", ds, gpu=gpu_from_vram(80), backend="kohya",
                      overrides={"max_train_steps": 2 * per_epoch})
    assert whole.hyper.max_train_steps == 2 * per_epoch and not any("rounded up" in e for e in whole.explanations)
