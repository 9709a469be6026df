"""Finding and checking the Kohya install: venv, torch against the GPU, the sd-scripts pin, models, tokenizers."""

from __future__ import annotations

import json
import shutil

import pytest
from kohya_standin import fixtures as standin_fixtures
from kohya_standin.build import PINNED, clip_keys, mmdit_keys, write_safetensors

from devserver_lora.errors import BackendError
from devserver_lora.train.cli import main as train_main
from devserver_lora.train.kohya import models as km
from devserver_lora.train.kohya import venv as kv

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


def test_pinned_commit_matches_the_stand_in_and_setup_script():
    from conftest import ROOT

    assert kv.PINNED_COMMIT == PINNED
    assert PINNED in (ROOT / "trainer" / "setup.sh").read_text()


def test_find_kohya_layouts_and_errors(tmp_path, kohya_env):
    install = kv.find_kohya(kohya_env.kohya_dir)
    assert install.scripts_dir.name == "sd-scripts" and install.python.name == "python"
    assert install.tokenizer_cache_dir == kohya_env.kohya_dir / "tokenizers"
    for bad, code in ((None, "kohya_missing"), (tmp_path / "nope", "kohya_missing"), (tmp_path, "kohya_missing")):
        with pytest.raises(BackendError) as exc:
            kv.find_kohya(bad)
        assert exc.value.diagnosis == code and "setup.sh" in exc.value.hint
    shutil.rmtree(kohya_env.kohya_dir / "venv")
    with pytest.raises(BackendError) as exc:
        kv.find_kohya(kohya_env.kohya_dir)
    assert exc.value.diagnosis == "kohya_venv_missing"


def test_read_git_head_variants(tmp_path):
    repo = tmp_path / "r"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert kv.read_git_head(repo) is None
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs\n{PINNED} refs/heads/main\n")
    assert kv.read_git_head(repo) == PINNED
    (repo / ".git" / "HEAD").write_text(PINNED.upper() + "\n")  # detached
    assert kv.read_git_head(repo) == PINNED


@pytest.mark.parametrize(
    ("archs", "cap", "expected"),
    [
        (["sm_50", "sm_80", "sm_86", "sm_90", "compute_90"], "12.0", "ptx"),
        (["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], "12.0", "binary"),
        (["sm_80", "sm_86"], "8.9", "binary"),  # same major, lower minor runs
        (["sm_90"], "8.6", "none"),
        ([], "12.0", "none"),
    ],
)
def test_arch_support(archs, cap, expected):
    assert kv.arch_supported(archs, cap) == expected


def test_rtx_5090_with_a_cu124_torch_is_a_blocker_with_the_fix():
    probe = {"torch": "2.6.0+cu124", "cuda_version": "12.4", "arch_list": ["sm_50", "sm_80", "sm_86", "sm_90"],
             "cuda_available": True,
             "devices": [{"name": "NVIDIA GeForce RTX 5090", "capability": "12.0", "vram_gb": 31.4}]}
    problems = kv.torch_problems(probe, gpu_capability=None)
    arch = [p for p in problems if p.code == "cuda_arch"][0]
    assert arch.severity == "error" and "sm_120" in arch.message and "cu128" in arch.hint
    ok = dict(probe, torch="2.7.0+cu128", arch_list=["sm_90", "sm_100", "sm_120"])
    assert all(p.severity == "info" for p in kv.torch_problems(ok, gpu_capability=None))


def test_real_probe_in_the_venv_python(kohya_env):
    install = kv.find_kohya(kohya_env.kohya_dir)
    result = kv.probe_venv(install.python, modules=["find:voluptuous", "import:surely_not_a_module_xyz"])
    assert result["torch"].startswith("2.")
    assert isinstance(result["arch_list"], list)
    assert result["modules"]["voluptuous"] == "present"
    assert result["modules"]["surely_not_a_module_xyz"] is None


def test_model_headers_are_classified(tmp_path):
    large = write_safetensors(tmp_path / "l.safetensors", mmdit_keys(38))
    medium = write_safetensors(tmp_path / "m.safetensors", mmdit_keys(24, attn2_blocks=13))
    tiny = write_safetensors(tmp_path / "t.safetensors", mmdit_keys(2, attn2_blocks=1))
    assert km.classify(large)[0] == "sd35_large"
    assert km.classify(medium)[0] == "sd35_medium"
    assert km.classify(tiny)[0] == "sd3"
    assert km.classify(write_safetensors(tmp_path / "c.safetensors", clip_keys(32)))[0] == "clip_g"
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(Exception, match="safetensors"):
        km.classify(tmp_path / "junk.safetensors")


def test_check_environment_names_wrong_and_missing_files(kohya_env):
    models = kohya_env.models_dir
    write_safetensors(models / "sd3.5_large.safetensors", mmdit_keys(24, attn2_blocks=13))  # Medium given as Large
    write_safetensors(models / "clip_l.safetensors", clip_keys(32))  # CLIP-G given as CLIP-L
    (models / "t5xxl_fp16.safetensors").unlink()
    shutil.rmtree(kohya_env.kohya_dir / "tokenizers" / "google_t5-v1_1-xxl")
    (kohya_env.kohya_dir / "sd-scripts" / ".git" / "refs" / "heads" / "main").write_text("0" * 40)
    problems = kv.environment_problems(kohya_env.kohya_dir, family="sd35_large", models_dir=models, probe=False)
    by_code = {}
    for p in problems:
        by_code.setdefault(p.code, []).append(p)
    mismatch = {p.path: p for p in by_code["model_mismatch"]}
    assert "sd35_medium" in mismatch["checkpoint"].message and mismatch["checkpoint"].severity == "error"
    assert "clip_g" in mismatch["clip_l"].message
    assert by_code["model_missing"][0].path == "t5xxl" and "t5xxl_fp16.safetensors" in by_code["model_missing"][0].hint
    assert "google/t5-v1_1-xxl" in by_code["tokenizers"][0].message
    assert by_code["kohya_commit"][0].severity == "warning"
    assert kv.blockers(problems)


def test_check_command_exit_codes_and_json(kohya_env, capsys):
    args = ["check", "--kohya-dir", str(kohya_env.kohya_dir), "--models-dir", str(kohya_env.models_dir)]
    assert train_main([*args, "--no-probe", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and {f["code"] for f in report["findings"]} >= {"kohya"}
    # with the probe: this machine's CPU torch has no kernels for an RTX 5090 -> blocker, with the fix printed
    assert train_main([*args, "--gpu-capability", "12.0"]) == 1
    text = capsys.readouterr().out
    assert "sm_120" in text and "fix:" in text and "cu128" in text
