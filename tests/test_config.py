"""Output configs, chunks and the three LoRA spellings (issue 2)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import COMFY_FIXTURES, SCHEMAS, devserver_sample
from devserver_tree import plain_config, write_devserver_tree

from devserver_lora.config.chunks import sd35_chunk
from devserver_lora.config.files import load_output_chunk, load_output_config, parse_output_config, write_output_config
from devserver_lora.config.make import make_lora_output_config
from devserver_lora.config.models import OutputConfig
from devserver_lora.config.tree import SchemasTree
from devserver_lora.errors import ConfigError
from devserver_lora.lora import spec as lora_spec
from devserver_lora.lora.spec import LoraSpec


def _sample(name: str) -> dict:
    return json.loads(devserver_sample(name).read_text(encoding="utf-8"))


def test_output_config_sample_round_trips_every_field() -> None:
    raw = _sample("sd35_large.json")
    cfg = load_output_config(devserver_sample("sd35_large.json"))
    assert cfg.to_json_dict() == raw
    # Fields DevServer's loader drops but the file carries survive too.
    assert cfg.model_extra["display"]["icon"] == "🎨"
    assert cfg.loras == []


def test_output_chunk_sample_round_trips_every_field() -> None:
    raw = _sample("output_image_sd35_large.json")
    chunk = load_output_chunk(devserver_sample("output_image_sd35_large.json"))
    assert chunk.to_json_dict() == raw
    assert chunk.backend_type == "comfyui"
    assert [t.node_id for t in chunk.mapping_targets("prompt")] == ["10"]
    assert chunk.mapping_targets("nope") == []


def test_input_mappings_list_form() -> None:
    raw = sd35_chunk("output_image_sd35_large")
    raw["input_mappings"]["prompt"] = [
        {"node_id": "10", "field": "inputs.value"},
        {"node_id": "11", "field": "inputs.value", "default": ""},
    ]
    chunk = load_output_chunk_from(raw)
    assert [t.node_id for t in chunk.mapping_targets("prompt")] == ["10", "11"]
    assert chunk.to_json_dict()["input_mappings"]["prompt"][1]["default"] == ""


def load_output_chunk_from(raw: dict):
    from devserver_lora.config.files import parse_output_chunk

    return parse_output_chunk(raw)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _strings(v)]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []


def test_shipped_yoruba_config_is_our_own_and_has_what_devserver_reads() -> None:
    shipped = json.loads((SCHEMAS / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8"))
    # What DevServer's ConfigLoader keeps, and every placeholder its output_image proxy chunk fills.
    assert {"pipeline", "name", "description", "category", "parameters", "media_preferences", "meta"} <= set(shipped)
    assert {"OUTPUT_CHUNK", "WIDTH", "HEIGHT", "STEPS", "CFG", "SAMPLER", "SCHEDULER", "SEED",
            "NEGATIVE_PROMPT"} <= set(shipped["parameters"])
    assert shipped["parameters"]["OUTPUT_CHUNK"] == "output_image_sd35_large"
    assert shipped["meta"]["backend_type"] == "comfyui" and shipped["meta"]["base_model"] == "sd35_large"
    cfg = load_output_config(SCHEMAS / "configs/output/sd35_large_yoruba.json")
    assert [(s.name, s.strength_model, s.clip_strength) for s in cfg.loras] == [
        ("yorubaheritage_sd35.safetensors", 0.85, 0.85)
    ]
    # Both spellings are present so DevServer's own loader keeps the LoRA.
    assert shipped["lora"]["name"] == shipped["parameters"]["loras"][0]["name"]
    assert shipped["parameters"]["loras"][0]["strength"] == 0.85


def test_shipped_yoruba_config_shares_no_text_with_devserver_sd35_large() -> None:
    sample = _sample("sd35_large.json")
    shipped = (SCHEMAS / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8")
    theirs = [t for t in _strings(sample) if len(t) >= 20 and " " in t]  # prose, not identifiers (facts)
    assert theirs and [t for t in theirs if t in shipped] == []


def _base_config() -> dict:
    return plain_config()


def test_three_spellings_normalise_to_the_same_specs() -> None:
    as_object = _base_config() | {"lora": {"name": "x.safetensors", "strength_model": 0.9, "strength_clip": 0.9}}
    as_list = _base_config() | {"lora": [{"name": "x.safetensors", "strength_model": 0.9}]}
    native = _base_config()
    native["parameters"]["loras"] = [{"name": "x.safetensors", "strength": 0.9}]
    specs = [parse_output_config(d).loras for d in (as_object, as_list, native)]
    assert specs[0] == specs[1] == specs[2] == [LoraSpec(name="x.safetensors", strength_model=0.9, strength_clip=0.9)]


def test_clip_strength_defaults_to_model_strength() -> None:
    spec = LoraSpec(name="x.safetensors", strength_model=0.4)
    assert spec.strength_clip == spec.clip_strength == 0.4
    assert LoraSpec(name="x.safetensors").clip_strength == 1.0


def test_writing_emits_both_spellings_and_reads_back(tmp_path: Path) -> None:
    specs = [
        LoraSpec(name="a.safetensors", strength_model=0.7, strength_clip=0.5, trigger_words=["yoruba heritage"]),
        LoraSpec(name="styles/b.safetensors", strength=0.3),
    ]
    cfg = make_lora_output_config("sd35_large_test", specs, title="Test")
    path = write_output_config(cfg, tmp_path / "sd35_large_test.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [item["name"] for item in data["lora"]] == ["a.safetensors", "styles/b.safetensors"]
    assert data["parameters"]["loras"] == [
        {"name": "a.safetensors", "strength": 0.7, "strength_model": 0.7, "strength_clip": 0.5, "trigger_words": ["yoruba heritage"]},
        {"name": "styles/b.safetensors", "strength": 0.3, "strength_model": 0.3, "strength_clip": 0.3},
    ]
    assert load_output_config(path).loras == specs
    assert data["name"] == {"en": "SD 3.5 Large + LoRA “Test”", "de": "SD 3.5 Large + LoRA „Test“"}
    # DevServer's loader keeps only these keys; the LoRAs must survive in what it keeps.
    kept = {k: data[k] for k in ("pipeline", "name", "description", "category", "parameters", "media_preferences", "meta") if k in data}
    assert parse_output_config(kept).loras == specs
    with pytest.raises(ConfigError, match="already exists"):
        write_output_config(cfg, path)
    assert [p.name for p in tmp_path.iterdir()] == ["sd35_large_test.json"]  # no temp file left behind


def test_a_config_shows_the_card_text_under_the_card_language_only() -> None:
    spec = LoraSpec(name="adire.safetensors")
    cfg = make_lora_output_config("sd35_large_adire", [spec], title="Adire", language="yo",
                                  description="Àwọn aṣọ adire", tags=["aṣọ"]).to_json_dict()
    assert cfg["description"]["yo"] == "Àwọn aṣọ adire"
    assert "Àwọn" not in cfg["description"]["en"] + cfg["description"]["de"]  # no Yorùbá text labelled English
    assert cfg["tags"]["yo"] == ["aṣọ"] and "aṣọ" not in cfg["tags"]["en"] + cfg["tags"]["de"]
    english = make_lora_output_config("sd35_large_adire", [spec], title="Adire", language="en",
                                      description="Indigo resist-dyed cloth").to_json_dict()
    assert english["description"]["en"] == "Indigo resist-dyed cloth"
    assert "Indigo" not in english["description"]["de"]


@pytest.mark.parametrize("name", ["sd35_large_faces", "my_audio_lora", "Music_style", "video1", "barcode",
                                  "sd35_p5js_look", "tonejs_lora"])
def test_make_config_refuses_names_devserver_routes_as_non_image(name: str) -> None:
    with pytest.raises(ConfigError, match="would not route it as an image"):
        make_lora_output_config(name, [LoraSpec(name="x.safetensors")], title="x")


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 200])
def test_make_config_refuses_hostile_names(name: str) -> None:
    with pytest.raises(Exception, match="not allowed"):
        make_lora_output_config(name, [LoraSpec(name="x.safetensors")], title="x")


def _errors_for(data: dict) -> list:
    with pytest.raises(ConfigError) as info:
        parse_output_config(data, file="c.json")
    return info.value.problems


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../x.safetensors", "'.' or '..' part"),
        ("a/../../x.safetensors", "'.' or '..' part"),
        ("/etc/x.safetensors", "absolute path"),
        ("C:/x.safetensors", "absolute path"),
        ("a\\x.safetensors", "backslash"),
        ("a\x00.safetensors", "control character"),
        ("", "is empty"),
        ("x.ckpt", "must end with '.safetensors'"),
        ("x.safetensors.pt", "must end with '.safetensors'"),
    ],
)
def test_hostile_lora_names_are_rejected_with_their_reason(name: str, fragment: str) -> None:
    problems = _errors_for(_base_config() | {"lora": {"name": name}})
    assert [p.path for p in problems] == ["$.lora[0].name"]
    assert fragment in problems[0].message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (float("nan"), "finite number"),
        (float("inf"), "finite number"),
        (100.5, "less than or equal to 100"),
        (-101, "greater than or equal to -100"),
        (True, "not true/false"),
        ("strong", "not a number"),
    ],
)
def test_bad_strengths_are_rejected(value: object, fragment: str) -> None:
    problems = _errors_for(_base_config() | {"lora": {"name": "x.safetensors", "strength_clip": value}})
    assert [p.path for p in problems] == ["$.lora[0].strength_clip"]
    assert fragment in problems[0].message


def test_native_spelling_errors_point_into_parameters() -> None:
    raw = _base_config()
    raw["parameters"]["loras"] = [{"name": "ok.safetensors", "strength": 0.5}, {"name": "../bad.safetensors"}]
    problems = _errors_for(raw)
    assert [p.path for p in problems] == ["$.parameters.loras[1].name"]


def test_string_strength_from_placeholder_substitution_is_accepted() -> None:
    assert LoraSpec(name="x.safetensors", strength="0.85").strength_model == 0.85


def test_strength_and_strength_model_must_agree() -> None:
    with pytest.raises(ValueError, match="disagree"):
        LoraSpec(name="x.safetensors", strength=0.5, strength_model=0.9)


def test_top_level_and_parameters_must_agree() -> None:
    raw = _base_config() | {"lora": {"name": "a.safetensors"}}
    raw["parameters"]["loras"] = [{"name": "b.safetensors", "strength": 1.0}]
    problems = _errors_for(raw)
    assert "name different LoRAs" in problems[0].message


def test_unknown_lora_field_is_an_error_not_ignored() -> None:
    problems = _errors_for(_base_config() | {"lora": {"name": "x.safetensors", "strenght_model": 0.5}})
    assert problems[0].path == "$.lora[0].strenght_model"


def test_strength_range_matches_comfyui_lora_loader() -> None:
    info = json.loads((COMFY_FIXTURES / "object_info_LoraLoader.json").read_text())
    required = info["LoraLoader"]["input"]["required"]
    for key in ("strength_model", "strength_clip"):
        spec = required[key][1]
        assert (spec["min"], spec["max"]) == (lora_spec.STRENGTH_MIN, lora_spec.STRENGTH_MAX)


def test_interception_sample_loras_are_valid_specs() -> None:
    raw = _sample("cooked_negatives.json")
    specs = [LoraSpec.model_validate(x) for x in raw["meta"]["loras"]]
    assert specs[0].strength_model == specs[0].clip_strength == 0.9


def _tree(tmp_path: Path) -> Path:
    root = write_devserver_tree(tmp_path / "schemas")
    # As upstream today: the plain SD3.5 config renders through a Diffusers chunk this tree does not have.
    upstream = plain_config()
    upstream["parameters"]["OUTPUT_CHUNK"] = "output_image_sd35_diffusers"
    (root / "configs/output/sd35_large.json").write_text(json.dumps(upstream), encoding="utf-8")
    (root / "configs/output/sd35_large_yoruba.json").write_text(
        (SCHEMAS / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (root / "configs/output/old.json.deprecated").write_text("{not json", encoding="utf-8")
    return root


def test_schemas_tree_resolves_like_devserver(tmp_path: Path) -> None:
    tree = SchemasTree.load(_tree(tmp_path))
    assert set(tree.output_configs) == {"sd35_large", "sd35_large_yoruba"}
    # The proxy chunk is not an output chunk; the project's own triple-CLIP chunk lies under the tree.
    assert set(tree.chunks) == {"output_image_sd35_large", "output_image_sd35_large_triple_clip"}
    assert tree.chunk_origins["output_image_sd35_large"].endswith("chunks/output_image_sd35_large.json")
    assert "devserver-lora's own chunk" in tree.chunk_origins["output_image_sd35_large_triple_clip"]
    assert set(tree.pipelines) == {"single_text_media_generation"}
    resolved = tree.resolve("sd35_large_yoruba")
    assert resolved.chunk.name == "output_image_sd35_large"
    assert [s.name for s in resolved.loras] == ["yorubaheritage_sd35.safetensors"]
    assert set(tree.lora_configs()) == {"sd35_large_yoruba"}
    with pytest.raises(ConfigError, match="output_image_sd35_diffusers"):
        tree.resolve("sd35_large")
    with pytest.raises(ConfigError) as info:
        tree.resolve("nope")
    assert "sd35_large_yoruba" in info.value.hint
    assert tree.errors() == [] and tree.skipped_counts() == {"output configs without LoRAs": 1}
    without_own = SchemasTree.load(tmp_path / "schemas", own_chunks=False)
    assert set(without_own.chunks) == {"output_image_sd35_large"}


def test_schemas_tree_is_strict_on_lora_configs_and_their_chunks_only(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    bad = json.loads((root / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8"))
    bad["lora"]["name"] = "../x.safetensors"
    bad["parameters"].pop("loras")
    (root / "configs/output/broken.json").write_text(json.dumps(bad), encoding="utf-8")
    garbled = json.loads((root / "configs/output/sd35_large_yoruba.json").read_text(encoding="utf-8"))
    garbled["parameters"]["OUTPUT_CHUNK"] = "garbage"
    (root / "configs/output/sd35_large_garbled.json").write_text(json.dumps(garbled), encoding="utf-8")
    (root / "chunks/garbage.json").write_text('{"a": 1,}', encoding="utf-8")
    (root / "chunks/unused_garbage.json").write_text('{"a": 1,}', encoding="utf-8")  # no LoRA config uses it
    tree = SchemasTree.load(root)
    text = "\n".join(map(str, tree.lora_config_problems()))
    assert "broken.json: $.lora[0].name" in text
    assert "garbage.json" in text and "line 1, column 9" in text and "unused_garbage" not in text
    with pytest.raises(ConfigError, match="not valid"):
        tree.resolve("broken")
    with pytest.raises(ConfigError, match="'garbage' is not a valid ComfyUI output chunk"):
        tree.resolve("sd35_large_garbled")
    assert tree.resolve("sd35_large_yoruba").loras  # the good config still resolves


def test_model_copy_does_not_share_state() -> None:
    cfg = OutputConfig.model_validate(_base_config() | {"lora": {"name": "x.safetensors"}})
    data = cfg.to_json_dict()
    again = copy.deepcopy(data)
    data["parameters"]["loras"].append({"name": "y.safetensors"})
    assert cfg.to_json_dict() == again
