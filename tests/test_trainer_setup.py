"""trainer/setup.sh: syntax, lint, option parsing and planned commands (the GitHub path cannot run in CI); the
--source path runs for real in tests/test_kohya_real.py, and its file check runs here against a copied tree."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

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
    # The checkout's OWN requirements.txt, from inside the checkout (its `-e .` installs the checkout itself).
    req = next(line for line in lines if "-r requirements.txt" in line)
    assert req.startswith(f"+ cd {tmp_path / 'k' / 'sd-scripts'} && ") and "pip install -r requirements.txt" in req
    assert not any("trainer/requirements.txt" in line for line in lines)
    assert lines.index(torch_line) < lines.index(req)  # torch for the CUDA first, or diffusers[torch] pulls its own
    assert any("sd-scripts.source.json git https://github.com/kohya-ss/sd-scripts.git" in line for line in lines)
    for hub_id in TOKENIZERS["sd35_large"]:
        assert hub_id in result.stdout
    assert not (tmp_path / "k").exists()  # a dry run changes nothing


def test_option_parsing(tmp_path):
    cu124 = sh("--dry-run", "--dir", str(tmp_path), "--cuda", "cu124")
    assert "torch==2.6.0" in cu124.stdout and "/whl/cu124" in cu124.stdout
    custom = sh("--dry-run", "--dir", str(tmp_path), "--torch", "2.8.0", "--torchvision", "0.23.0")
    assert "torch==2.8.0" in custom.stdout and "torchvision==0.23.0" in custom.stdout
    only = sh("--dry-run", "--dir", str(tmp_path), "--tokenizers-only")
    assert "git clone" not in only.stdout and "google/t5-v1_1-xxl" in only.stdout
    skip = sh("--dry-run", "--dir", str(tmp_path), "--skip-tokenizers")
    assert "save_pretrained" not in skip.stdout
    pypi = sh("--dry-run", "--dir", str(tmp_path), "--torch-index", "pypi")
    assert "torch==2.7.1" in pypi.stdout and "--index-url" not in pypi.stdout
    for bad in (["--cuda", "cu999"], ["--bogus"], ["--dir"], ["--commit", "48d368fa"], ["--commit", "z" * 40],
                ["--torch-index", "nowhere"], ["--source", str(tmp_path)]):
        result = sh("--dry-run", *bad)
        assert result.returncode == 2 and "setup.sh:" in result.stderr, bad
    assert sh("--help").returncode == 0 and "--cuda" in sh("--help").stdout


def test_no_copy_of_the_requirements():
    # One truth: the pinned checkout's requirements.txt. A copy here went stale (issue 12 item 6).
    assert not (ROOT / "trainer" / "requirements.txt").exists()
    for doc in (ROOT / "trainer" / "README.md", SETUP):
        assert "trainer/requirements.txt" not in doc.read_text()


def _plain_tree(tmp_path: Path) -> Path:
    """A plain tree holding the pinned file list's paths with contents matching only where we say."""
    tree = tmp_path / "src"
    for line in PIN_LIST.read_text().splitlines():
        rel = line.split("  ", 1)[1]
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("not the pinned file\n")
    return tree


PIN_LIST = ROOT / "trainer" / "sd-scripts.sha256"


def test_pinned_file_list_is_well_formed():
    lines = PIN_LIST.read_text().splitlines()
    assert len(lines) > 200
    for line in lines:
        digest, rel = line.split("  ", 1)
        assert len(digest) == 64 and set(digest) <= set("0123456789abcdef") and rel.startswith("./"), line
        assert ".." not in rel.split("/") and "__pycache__" not in rel
    rels = [line.split("  ", 1)[1] for line in lines]
    assert "./sd3_train_network.py" in rels and "./train_network.py" in rels and "./requirements.txt" in rels


def test_source_tree_that_differs_from_the_pin_is_refused(tmp_path):
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum not installed (coreutils)")
    tree = _plain_tree(tmp_path)
    result = sh("--dir", str(tmp_path / "k"), "--source", str(tree), "--cuda", "cpu", "--skip-tokenizers")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "differs from sd-scripts " + PINNED_COMMIT in result.stderr and "sd3_train_network.py: FAILED" in result.stdout
    assert not (tmp_path / "k" / "sd-scripts").exists() and not (tmp_path / "k" / "venv").exists()


def test_source_plan_copies_and_records(tmp_path):
    tree = _plain_tree(tmp_path)
    result = sh("--dry-run", "--dir", str(tmp_path / "k"), "--source", str(tree), "--cuda", "cpu")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not any("git " in line for line in lines)
    check = next(i for i, line in enumerate(lines) if "sha256sum --check" in line)
    copy = next(i for i, line in enumerate(lines) if line.startswith("+ cp -R"))
    assert check < copy and str(PIN_LIST) in lines[check]
    assert f"{tmp_path / 'k' / 'sd-scripts.source.json'} source {tree}" in lines[copy + 1]
    other = sh("--dry-run", "--dir", str(tmp_path / "k"), "--source", str(tree), "--commit", "a" * 40)
    assert "sha256sum" not in other.stdout and "not\\ checked" in other.stdout


def test_source_record_is_reported_by_check(tmp_path):
    from devserver_lora.train.kohya import venv

    root = tmp_path / "k"
    (root / "sd-scripts").mkdir(parents=True)
    (root / "sd-scripts" / "sd3_train_network.py").write_text("")
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    def commit_finding() -> venv.Problem:
        found = venv.environment_problems(root, family="sd35_large", models_dir=None, probe=False)
        return next(p for p in found if p.code == "kohya_commit")
    assert commit_finding().severity == "warning"  # no .git, no record: cannot tell
    record = {"kind": "source", "origin": "/src", "commit": PINNED_COMMIT,
              "checked": f"every file in trainer/sd-scripts.sha256 matches the pin {PINNED_COMMIT}"}
    (root / venv.SOURCE_RECORD).write_text(json.dumps(record))
    found = commit_finding()
    assert found.severity == "info" and "/src" in found.message
    (root / venv.SOURCE_RECORD).write_text(json.dumps({**record, "checked": "not checked: no file list"}))
    assert commit_finding().severity == "warning"
