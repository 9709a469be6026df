"""`devserver-lora validate` / `show-config` and the exported JSON Schemas (issue 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from conftest import SCHEMAS, devserver_sample
from devserver_tree import unmodelled_files, write_devserver_tree

from devserver_lora.cli import build_parser, main
from devserver_lora.config.chunks import sd35_chunk
from devserver_lora.config.tree import SchemasTree
from devserver_lora.config.validate import export_json_schemas, tree_problems, validate_tree
from devserver_lora.errors import ConfigError

YORUBA = SCHEMAS / "configs/output/sd35_large_yoruba.json"


def _yoruba() -> dict:
    return json.loads(YORUBA.read_text(encoding="utf-8"))


def _write(folder: Path, name: str, data: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")
    return path


def test_exported_schemas_are_not_stale() -> None:
    for stem, schema in export_json_schemas().items():
        on_disk = json.loads((SCHEMAS / f"{stem}.schema.json").read_text(encoding="utf-8"))
        assert on_disk == schema, f"schemas/{stem}.schema.json is stale: run `devserver-lora export-schemas`"


def test_json_schema_alone_accepts_real_files_and_rejects_hostile_names() -> None:
    schemas = export_json_schemas()
    config_schema, chunk_schema = schemas["output_config"], schemas["output_chunk"]
    jsonschema.validate(_yoruba(), config_schema)
    jsonschema.validate(sd35_chunk("output_image_sd35_large"), chunk_schema)
    as_list = _yoruba() | {"lora": [_yoruba()["lora"]]}
    jsonschema.validate(as_list, config_schema)
    for bad in ("../x.safetensors", "/abs.safetensors", "a\\b.safetensors", "x.ckpt", "a//b.safetensors"):
        data = _yoruba()
        data["parameters"]["loras"][0]["name"] = bad
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, config_schema)


def _real_devserver_files() -> list[Path]:
    names = ("sd35_large.json", "output_image_sd35_large.json", "output_image.json",
             "single_text_media_generation.json", "cooked_negatives.json")
    return [devserver_sample(name) for name in names]


def test_json_schema_accepts_devserver_real_files() -> None:
    schemas = export_json_schemas()
    jsonschema.validate(json.loads(devserver_sample("sd35_large.json").read_text()), schemas["output_config"])
    chunk = json.loads(devserver_sample("output_image_sd35_large.json").read_text())
    jsonschema.validate(chunk, schemas["output_chunk"])


def test_samples_and_shipped_files_pass() -> None:
    report = validate_tree([*_real_devserver_files(), SCHEMAS])
    # DevServer's own sd35_large renders through a Diffusers chunk and carries no LoRA: skipped, not judged.
    assert report.problems == []
    assert report.judged == 4  # our example, DevServer's SD3.5 chunk it names, cooked_negatives' LoRA, our chunk
    assert report.skipped == {"output configs without LoRAs": 1, "proxy chunks": 1, "pipelines": 1}


def _codes(problems: list) -> list[tuple[str, str, str]]:
    return [(Path(p.file).name, p.path, p.code) for p in problems if p.severity == "error"]


def test_broken_copies_are_rejected_precisely(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    hostile = _yoruba()
    hostile["lora"]["name"] = "../../models/checkpoints/x.safetensors"
    hostile["parameters"]["loras"][0]["name"] = hostile["lora"]["name"]
    _write(bad, "sd35_large_hostile.json", hostile)

    nan = _yoruba()
    nan["lora"]["strength_model"] = float("nan")
    nan["parameters"].pop("loras")
    _write(bad, "sd35_large_nan.json", json.dumps(nan))  # json.dumps writes a bare NaN, as a careless editor would

    diffusers = _yoruba()
    diffusers["parameters"]["OUTPUT_CHUNK"] = "output_image_sd35_diffusers"
    _write(bad, "sd35_large_diffusers_lora.json", diffusers)
    chunk = sd35_chunk("output_image_sd35_diffusers") | {"backend_type": "diffusers"}
    _write(bad, "output_image_sd35_diffusers.json", chunk)

    _write(bad, "sd35_large_faces.json", _yoruba())

    unmirrored = _yoruba()
    unmirrored["parameters"].pop("loras")
    _write(bad, "sd35_large_unmirrored.json", unmirrored)

    problems = tree_problems([bad, SCHEMAS])
    codes = _codes(problems)
    assert ("sd35_large_hostile.json", "$.lora[0].name", "value_error") in codes
    assert ("sd35_large_hostile.json", "$.parameters.loras[0].name", "value_error") in codes
    assert ("sd35_large_nan.json", "$.lora[0].strength_model", "value_error") in codes
    assert ("sd35_large_diffusers_lora.json", "$.parameters.OUTPUT_CHUNK", "chunk_not_comfyui") in codes
    assert ("sd35_large_faces.json", "$", "name_routes_non_image") in codes
    # DevServer's config loader drops a top-level `lora`: without the mirror the config renders without its LoRA.
    assert ("sd35_large_unmirrored.json", "$.parameters.loras", "lora_not_mirrored") in codes
    assert ("sd35_large_nan.json", "$.parameters.loras", "lora_not_mirrored") in codes
    assert len(codes) == 7, codes
    messages = {p.code + ":" + Path(p.file).name: p.message for p in problems}
    assert "climb" in " ".join(p.hint or p.message for p in problems if "hostile" in p.file) or any(
        "'..' part" in p.message for p in problems
    )
    assert "finite" in messages["value_error:sd35_large_nan.json"]
    assert "'diffusers'" in messages["chunk_not_comfyui:sd35_large_diffusers_lora.json"]
    assert "'ace'" in messages["name_routes_non_image:sd35_large_faces.json"]


def test_chunk_mapping_to_missing_node_and_bad_interception_lora(tmp_path: Path) -> None:
    chunk = sd35_chunk("output_image_sd35_large")
    chunk["input_mappings"]["seed"]["node_id"] = "99"
    _write(tmp_path / "chunks", "output_image_sd35_large.json", chunk)
    # An interception config declares its LoRAs as meta.loras [{name, strength}] (DESIGN.md section 1).
    interception = {"name": {"en": "Cooked negatives"}, "meta": {"stage": "interception",
                                                                 "loras": [{"name": "cooked.safetensors",
                                                                            "strength": "very"}]}}
    _write(tmp_path / "configs/interception", "cooked_negatives.json", interception)
    codes = _codes(tree_problems([tmp_path]))
    assert ("output_image_sd35_large.json", "$.input_mappings.seed.node_id", "invalid") in codes
    assert ("cooked_negatives.json", "$.meta.loras[0].strength_model", "value_error") in codes


def test_lora_config_without_its_chunk_is_an_error(tmp_path: Path) -> None:
    lost = _yoruba()
    lost["parameters"]["OUTPUT_CHUNK"] = "output_image_nowhere"
    _write(tmp_path, "sd35_large_lost.json", lost)
    codes = _codes(tree_problems([tmp_path]))
    assert codes == [("sd35_large_lost.json", "$.parameters.OUTPUT_CHUNK", "chunk_not_found")]


def test_a_chunk_only_the_project_layer_has_is_a_labelled_warning(tmp_path: Path) -> None:
    # Without DevServer's tree, the example is judged against the project's stand-in for DevServer's chunk.
    problems = tree_problems([YORUBA])
    assert [(p.severity, p.code) for p in problems] == [("warning", "chunk_from_own_layer")]
    assert "stand-in for DevServer's output_image_sd35_large" in problems[0].message


def test_cli_validate_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SCHEMAS)]) == 0
    assert "checked 2 file(s): judged 2, skipped 0" in capsys.readouterr().out
    _write(tmp_path, "sd35_large_faces.json", _yoruba())
    assert main(["validate", str(tmp_path), str(SCHEMAS), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and (report["checked"], report["judged"], report["skipped"]) == (3, 3, {})
    assert report["problems"][0]["code"] == "name_routes_non_image"
    assert main(["validate", str(tmp_path / "missing.json")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_show_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show-config", "sd35_large_yoruba", "--schemas", str(SCHEMAS), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["output_chunk"] == "output_image_sd35_large"
    assert shown["loras"][0]["strength_clip"] == 0.85
    assert main(["show-config", "sd35_large_yoruba"]) == 0
    assert "yorubaheritage_sd35.safetensors: model 0.85, clip 0.85" in capsys.readouterr().out
    assert main(["show-config", "nope", "--schemas", str(SCHEMAS)]) == 1
    assert "known configs" in capsys.readouterr().err


def test_help_everywhere() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        result = subprocess.run(
            [sys.executable, "-m", "devserver_lora", name, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (name, result.stderr)
        assert "usage:" in result.stdout


def test_a_devserver_shaped_tree_validates_with_what_it_does_not_model(tmp_path: Path) -> None:
    root = write_devserver_tree(tmp_path / "schemas")
    expected = unmodelled_files(root)
    noname = sd35_chunk("output_image_noname")
    del noname["name"]  # DevServer's ChunkBuilder names such a chunk after its file
    _write(root / "chunks", "output_image_noname.json", noname)
    cfg = _yoruba()
    cfg["parameters"]["OUTPUT_CHUNK"] = "output_image_noname"
    _write(root / "configs/output", "sd35_large_noname.json", cfg)
    report = validate_tree([root])
    assert report.errors() == [], report.errors()
    assert {k: report.skipped[k] for k in expected} == expected
    assert report.judged == 3  # the LoRA config, the chunk it renders through, the SD3.5 chunk we wrote
    assert main(["validate", str(root)]) == 0
    tree = SchemasTree.load(root)
    assert tree.errors() == [] and tree.resolve("sd35_large_noname").chunk.name == "output_image_noname"


def test_lora_configs_devserver_would_not_render_are_errors(tmp_path: Path) -> None:
    root = write_devserver_tree(tmp_path / "schemas")
    unmodelled_files(root)
    python = _yoruba()
    python["parameters"]["OUTPUT_CHUNK"] = "output_music_demo"  # has chunks/output_music_demo.py
    _write(root / "configs/output", "sd35_large_python.json", python)
    renamed = _yoruba() | {"name": "something_else"}
    _write(root / "configs/output", "sd35_large_renamed.json", renamed)
    nopipe = _yoruba() | {"pipeline": "no_such_pipeline"}
    _write(root / "configs/output", "sd35_large_nopipe.json", nopipe)
    p5 = _yoruba()
    _write(root / "configs/output", "sd35_p5js_look.json", p5)
    codes = _codes(tree_problems([root]))
    assert ("sd35_large_python.json", "$.parameters.OUTPUT_CHUNK", "chunk_is_python") in codes
    assert ("sd35_large_renamed.json", "$.name", "registered_name_differs") in codes
    assert ("sd35_large_nopipe.json", "$.pipeline", "pipeline_not_found") in codes
    assert ("sd35_p5js_look.json", "$", "name_routes_non_image") in codes
    tree = SchemasTree.load(root)
    assert "something_else" in tree.output_configs  # registered under its string name, as DevServer does
    with pytest.raises(ConfigError, match="Python chunk"):
        tree.resolve("sd35_large_python")
