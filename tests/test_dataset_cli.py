"""`python -m devserver_lora.train prepare` then `plan` end to end, and the errors a student meets."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT
from datasets import CARD, TRIGGER, make_image_folder

from devserver_lora.train.cli import main


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_prepare_plan_jobs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEVSERVER_LORA_HOME", str(tmp_path / "home"))
    src = make_image_folder(tmp_path / "photos", 14, planted=("cmyk", "caption_missing"))
    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD), encoding="utf-8")

    code, report = run_json(capsys, "check-dataset", str(src), "--trigger", TRIGGER, "--preset", "fotostudio")
    assert code == 0 and report["ok"] and report["kind"] == "folder"
    assert {p["code"] for p in report["problems"]} == {"mode_converted", "caption_missing", "image_too_small"}

    ds = tmp_path / "adire_ds"
    code, prepared = run_json(capsys, "prepare", str(src), "--out", str(ds), "--trigger", TRIGGER, "--card",
                              str(card), "--preset", "fotostudio", "--workers", "1")
    assert code == 0 and prepared["num_images"] == 16 and prepared["card"] and prepared["repeats"] == 10
    assert (ds / "card.json").is_file() and (ds / "10_adire").is_dir()

    code, planned = run_json(capsys, "plan", str(ds), "--preset", "fotostudio", "--vram", "24", "--set",
                             "network_dim=8", "--out", str(tmp_path / "plan.json"), "--create-job")
    assert code == 0
    plan = planned["plan"]
    assert plan["hyper"]["network_dim"] == 8 and plan["memory"]["vram_gb"] == 24 and plan["trigger"] == TRIGGER
    assert json.loads((tmp_path / "plan.json").read_text())["output_name"] == "adire"
    job_id = planned["job_id"]

    code, listed = run_json(capsys, "jobs", "list")
    assert code == 0 and [j["id"] for j in listed["jobs"]] == [job_id]
    code, shown = run_json(capsys, "jobs", "show", job_id)
    assert code == 0 and shown["info"]["state"] == "created" and shown["events"][0]["type"] == "state"

    # Text output works too.
    assert main(["plan", str(ds), "--preset", "fotostudio", "--gpu", "RTX 4090"]) == 0
    text = capsys.readouterr().out
    assert "RTX 4090" in text and "why:" in text
    assert main(["jobs", "show", job_id]) == 0 and job_id in capsys.readouterr().out


def test_student_errors_exit_1_with_a_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEVSERVER_LORA_HOME", str(tmp_path / "home"))
    src = make_image_folder(tmp_path / "photos", 12, planted=("truncated",))
    # check-dataset: blocking error -> exit 1
    code, report = run_json(capsys, "check-dataset", str(src))
    assert code == 1 and not report["ok"]
    # prepare refuses
    code, err = run_json(capsys, "prepare", str(src), "--out", str(tmp_path / "ds"))
    assert code == 1 and err["error"] == "DatasetError" and "--skip-bad" in err["hint"]
    # no card -> plan refuses
    assert main(["prepare", str(src), "--out", str(tmp_path / "ds"), "--skip-bad", "--workers", "1"]) == 0
    capsys.readouterr()
    code, err = run_json(capsys, "plan", str(tmp_path / "ds"), "--vram", "24")
    assert code == 1 and "no dataset card" in err["message"]
    # add the card with flags
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in CARD.items()]
    assert main(["card", str(tmp_path / "ds"), *flags]) == 0
    capsys.readouterr()
    code, err = run_json(capsys, "plan", str(tmp_path / "ds"), "--vram", "24", "--set", "resolution=1000")
    assert code == 1 and err["problems"][0]["path"] == "$.hyper.resolution"
    code, err = run_json(capsys, "plan", str(tmp_path / "ds"), "--gpu", "Voodoo 2")
    assert code == 1 and "--vram" in err["hint"]
    code, err = run_json(capsys, "jobs", "show", "nothing-here")
    assert code == 1 and err["error"] == "JobError"


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "devserver_lora.train", "prepare", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "metadata.jsonl" in proc.stdout
