"""trainer/setup.sh cannot run in CI (no GitHub): check its syntax, lint, option parsing and planned commands."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import ROOT

from devserver_lora.train.kohya.venv import PINNED_COMMIT, TOKENIZERS

SETUP = ROOT / "trainer" / "setup.sh"


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, timeout=30, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


def test_syntax_and_shellcheck():
    assert subprocess.run(["bash", "-n", str(SETUP)], check=False, timeout=30).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    result = subprocess.run(["shellcheck", str(SETUP)], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout


def test_pin_is_consistent():
    assert (ROOT / "trainer" / "sd-scripts.commit").read_text().strip() == PINNED_COMMIT
    assert f'PINNED_COMMIT="{PINNED_COMMIT}"' in SETUP.read_text()


def test_dry_run_plans_the_whole_setup(tmp_path):
    result = sh("--dry-run", "--dir", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("+ git clone https://github.com/kohya-ss/sd-scripts.git") for line in lines)
    assert any(f"checkout --quiet --detach {PINNED_COMMIT}" in line for line in lines)
    torch_line = next(line for line in lines if "torch==" in line)
    assert "https://download.pytorch.org/whl/cu128" in torch_line  # the default supports sm_120 (RTX 50xx)
    assert any("-r " + str(ROOT / "trainer" / "requirements.txt") in line for line in lines)
    assert any("bitsandbytes" in line for line in lines)
    for hub_id in TOKENIZERS["sd35_large"]:
        assert hub_id in result.stdout
    assert not (tmp_path / "k").exists()  # a dry run changes nothing


def test_option_parsing(tmp_path):
    cu124 = sh("--dry-run", "--dir", str(tmp_path), "--cuda", "cu124")
    assert "torch==2.6.0" in cu124.stdout and "/whl/cu124" in cu124.stdout and "bitsandbytes" not in cu124.stdout
    custom = sh("--dry-run", "--dir", str(tmp_path), "--torch", "2.8.0", "--torchvision", "0.23.0")
    assert "torch==2.8.0" in custom.stdout and "torchvision==0.23.0" in custom.stdout
    only = sh("--dry-run", "--dir", str(tmp_path), "--tokenizers-only")
    assert "git clone" not in only.stdout and "google/t5-v1_1-xxl" in only.stdout
    skip = sh("--dry-run", "--dir", str(tmp_path), "--skip-tokenizers")
    assert "save_pretrained" not in skip.stdout
    for bad in (["--cuda", "cu999"], ["--bogus"], ["--dir"], ["--commit", "48d368fa"], ["--commit", "z" * 40]):
        result = sh("--dry-run", *bad)
        assert result.returncode == 2 and "setup.sh:" in result.stderr, bad
    assert sh("--help").returncode == 0 and "--cuda" in sh("--help").stdout


def test_requirements_pin_what_sd_scripts_needs():
    lines = [x.split("#")[0].strip() for x in (ROOT / "trainer" / "requirements.txt").read_text().splitlines()]
    names = {x.split("==")[0].split("<")[0].split("[")[0] for x in lines if x}
    assert {"accelerate", "transformers", "diffusers", "voluptuous", "toml", "safetensors", "sentencepiece",
            "bitsandbytes"} <= names
    assert not any(x.startswith("torch") for x in names)  # torch comes per CUDA flavour from setup.sh
