"""The student's whole path through the CLI: prepare -> plan -> run (Kohya stand-in) -> install -> the new output
config loads, validates and injects into the SD3.5 ComfyUI graph with the trigger word in its LoRA file."""

from __future__ import annotations

import json

from kohya_standin import fixtures as standin_fixtures
from kohya_standin.build import CARD, schemas_tree
from PIL import Image

from devserver_lora.config.tree import SchemasTree
from devserver_lora.config.validate import tree_problems
from devserver_lora.graph.inject import inject_loras
from devserver_lora.lora.report import inspect_lora
from devserver_lora.train.cli import main as train_main

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


def _json(capsys) -> dict:
    text = capsys.readouterr().out
    return json.loads(text[text.index("{"):])


def test_prepare_plan_run_install(kohya_env, capsys):
    root = kohya_env.root
    src = root / "photos"
    src.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        Image.new("RGB", (96, 96), colour).save(src / f"p{i}.png")
        (src / f"p{i}.txt").write_text(f"a coloured square number {i}", encoding="utf-8")
    (root / "card.json").write_text(json.dumps(CARD))
    where = ["--jobs-dir", str(kohya_env.jobs_dir)]
    kohya = ["--kohya-dir", str(kohya_env.kohya_dir), "--models-dir", str(kohya_env.models_dir)]

    assert train_main(["prepare", str(src), "--out", str(root / "ds"), "--trigger", "tinyobj", "--repeats", "1",
                       "--card", str(root / "card.json"), "--workers", "1", "--json"]) == 0
    capsys.readouterr()
    assert train_main(["plan", str(root / "ds"), "--preset", "quick_test", "--gpu", "RTX 5090", "--backend", "kohya",
                       "--set", "max_train_steps=6", "--set", "save_every_n_steps=2", "--name", "flow_lora",
                       "--create-job", "--json", *where]) == 0
    job_id = _json(capsys)["job_id"]

    assert train_main(["check", "--job", job_id, "--no-probe", "--json", *where, *kohya]) == 0
    assert _json(capsys)["ok"]
    # the foreground preflight asks the venv's torch: this machine's CPU build has no sm_120 kernels for the
    # planned RTX 5090, so nothing starts and the fix is printed
    assert train_main(["run", job_id, "--backend", "kohya", *where, *kohya]) == 1
    refused = capsys.readouterr()
    assert "sm_120" in refused.out and "cu128" in refused.out and "not started" in refused.err
    assert train_main(["run", job_id, "--backend", "kohya", "--no-preflight", "--timeout", "120", *where, *kohya]) == 0
    shown = capsys.readouterr().out
    assert "LoRA ready" in shown and "flow_lora-step00000002.safetensors" in shown

    schemas = schemas_tree(root / "devserver_schemas")
    # the stand-in trained on the depth-2 test checkpoint, which is what this ComfyUI would load (issue 12 item 5)
    assert train_main(["install", job_id, "--loras-dir", str(root / "comfy_loras"), "--schemas", str(schemas),
                       "--against", "sd3:2:te=clip_l,clip_g,t5xxl", "--json", *where]) == 0
    result = _json(capsys)
    assert result["config_name"] == "sd35_large_flow_lora" and result["trigger_words"] == ["tinyobj"]

    report = inspect_lora(result["lora_path"])
    assert "tinyobj" in report.trigger_words
    assert [p for p in tree_problems([schemas]) if p.severity == "error"] == []
    resolved = SchemasTree.load(schemas).resolve("sd35_large_flow_lora")
    assert resolved.config.parameters.OUTPUT_CHUNK == "output_image_sd35_large"
    graph = inject_loras(resolved.chunk.workflow, resolved.loras)
    names = [n["inputs"]["lora_name"] for n in graph.values() if n["class_type"].startswith("LoraLoader")]
    assert names == ["flow_lora.safetensors"]
