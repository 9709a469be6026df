"""DevServer wiring: our injector inside a stand-in BackendRouter, and the Stage-4 runner against the double.

The real DevServer app is exercised by tests/test_devserver_contract.py (opt-in: `-m devserver`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
from pathlib import Path

import pytest
from comfy_double import ComfyDouble
from conftest import COMFY_FIXTURES, SCHEMAS
from devserver_tree import QWEN_MODEL, plain_config, qwen_like_chunk, tiny_sd3_chunk, write_devserver_tree
from lora_files import zero_lora

from devserver_lora.config.chunks import sd35_chunk
from devserver_lora.config.files import parse_output_chunk
from devserver_lora.config.make import make_lora_output_config
from devserver_lora.devserver.hook import check_lora_configs, install_into_devserver
from devserver_lora.devserver.injector import LoraInjector, to_specs, triggers_in
from devserver_lora.devserver.stage4 import SEED_MAX, Stage4Runner, apply_input_mappings
from devserver_lora.errors import ComfyValidationError, ConfigError, DevserverLoraError, LoraFileError, WorkflowError
from devserver_lora.lora.spec import LoraSpec

LORA_TRIGGERS: list = []  # DevServer's global default list (config.LORA_TRIGGERS), empty as shipped
YORUBA = "yorubaheritage_sd35.safetensors"
TINY_CKPT = "tiny_sd3_random.safetensors"


class StandInBackendRouter:
    """A minimal stand-in for DevServer's BackendRouter (DESIGN.md section 1), written for these tests.

    Same method names and arguments as devserver/schemas/engine/backend_router.py:
    `_inject_lora_nodes(self, workflow, loras) -> workflow`,
    `_apply_input_mappings(self, workflow, mappings, input_data) -> (workflow, seed)`, and the order
    `_process_workflow_chunk` calls them in (LoRAs from parameters['loras'] or the global list, then mappings).
    """

    def _inject_lora_nodes(self, workflow: dict, loras: list) -> dict:
        # Upstream behaviour: first checkpoint, CLIP from the DualCLIPLoader, ONE strength, only MODEL rewired.
        workflow = copy.deepcopy(workflow)
        ckpt = next((k for k, n in workflow.items() if n.get("class_type") == "CheckpointLoaderSimple"), None)
        if ckpt is None:
            return workflow  # upstream skips every graph without a CheckpointLoaderSimple
        clip = next(([k, 0] for k, n in workflow.items() if n.get("class_type") == "DualCLIPLoader"), [ckpt, 1])
        consumers = [k for k, n in workflow.items() if n.get("inputs", {}).get("model") == [ckpt, 0]]
        next_id = max(int(k) for k in workflow if k.isdigit()) + 1
        model = [ckpt, 0]
        for i, lora in enumerate(loras):
            nid = str(next_id + i)
            workflow[nid] = {"class_type": "LoraLoader", "inputs": {
                "lora_name": lora["name"], "strength_model": lora.get("strength", 1.0),
                "strength_clip": lora.get("strength", 1.0), "model": model, "clip": clip}}
            model, clip = [nid, 0], [nid, 1]
        for c in consumers:
            workflow[c]["inputs"]["model"] = model
        return workflow

    def _apply_input_mappings(self, workflow: dict, mappings: dict, input_data: dict):
        seed = None
        for key, mapping in mappings.items():
            targets = mapping if isinstance(mapping, list) else [mapping]
            value = input_data.get(key)
            if value is None:
                value = targets[0].get("default")
            if value is None and targets[0].get("source") == "{{PREVIOUS_OUTPUT}}":
                value = input_data.get("prompt", "")
            if key == "seed" and value == "random":
                value = random.randint(0, 2**32 - 1)
                seed = value
            if value is not None:
                for t in targets:
                    parts = t["field"].split(".")
                    holder = workflow.setdefault(t["node_id"], {})
                    for p in parts[:-1]:
                        holder = holder.setdefault(p, {})
                    holder[parts[-1]] = value
        return workflow, seed

    def process_workflow_chunk(self, prompt: str, parameters: dict, chunk: dict):
        workflow = chunk["workflow"]
        loras = parameters.get("loras", LORA_TRIGGERS)
        if loras:
            workflow = self._inject_lora_nodes(workflow, loras)
        input_data = {"prompt": prompt, **parameters}
        return self._apply_input_mappings(workflow, chunk.get("input_mappings", {}), input_data)


def chunk() -> dict:
    return sd35_chunk("output_image_sd35_large")


def yoruba_parameters() -> dict:
    return json.loads((SCHEMAS / "configs" / "output" / "sd35_large_yoruba.json").read_text())["parameters"]


@pytest.fixture
def router_cls():
    # A fresh subclass per test, so patching one test's class never leaks into another.
    return type("Router", (StandInBackendRouter,), {})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A DevServer-shaped schemas tree with the example LoRA config installed in it."""
    root = write_devserver_tree(tmp_path / "schemas")
    shutil.copyfile(SCHEMAS / "configs/output/sd35_large_yoruba.json", root / "configs/output/sd35_large_yoruba.json")
    return root


@pytest.fixture
def loras(tmp_path: Path) -> Path:
    """A loras folder holding the example's LoRA (zero weights that fit SD3.5 Large as the chunk wires it)."""
    folder = tmp_path / "loras"
    folder.mkdir()
    zero_lora(folder / YORUBA)
    return folder


def test_upstream_injector_leaves_text_encoders_on_the_old_clip(router_cls) -> None:
    wf, _ = router_cls().process_workflow_chunk("a cloth", yoruba_parameters(), chunk())
    # The defect we fix: CLIPTextEncode still reads the DualCLIPLoader, so strength_clip does nothing.
    assert wf["1"]["inputs"]["clip"] == ["9", 0]


def test_installed_injector_rewires_clip_and_merges_trigger(router_cls, tree, loras) -> None:
    install_into_devserver(router_cls, schemas_dir=tree, loras_dir=loras)
    wf, _ = router_cls().process_workflow_chunk("indigo cloth at a market", yoruba_parameters(), chunk())
    loaders = {k: n for k, n in wf.items() if n["class_type"] in ("LoraLoader", "LoraLoaderModelOnly")}
    assert len(loaders) == 1
    (lid, lora), = loaders.items()
    assert lora["inputs"]["lora_name"] == YORUBA
    assert (lora["inputs"]["strength_model"], lora["inputs"]["strength_clip"]) == (0.85, 0.85)
    assert lora["inputs"]["clip"] == ["9", 0] and lora["inputs"]["model"] == ["5", 0]
    assert wf["1"]["inputs"]["clip"] == [lid, 1] and wf["6"]["inputs"]["clip"] == [lid, 1]
    assert wf["8"]["inputs"]["model"] == [lid, 0]
    assert wf["10"]["inputs"]["value"] == "yoruba heritage, indigo cloth at a market"


def test_trigger_already_written_by_the_llm_is_not_repeated(router_cls, tree, loras) -> None:
    install_into_devserver(router_cls, schemas_dir=tree, loras_dir=loras)
    prompt = "Yoruba Heritage textiles, adire"
    wf, _ = router_cls().process_workflow_chunk(prompt, yoruba_parameters(), chunk())
    assert wf["10"]["inputs"]["value"] == prompt


def test_separate_model_and_clip_strengths_and_idempotence(router_cls, tree, loras) -> None:
    zero_lora(loras / "a.safetensors")
    injector = install_into_devserver(router_cls, schemas_dir=tree, loras_dir=loras)
    params = {"loras": [{"name": "a.safetensors", "strength_model": 0.9, "strength_clip": 0.3}]}
    wf, _ = router_cls().process_workflow_chunk("x", params, chunk())
    lora = next(n for n in wf.values() if n["class_type"] == "LoraLoader")
    assert (lora["inputs"]["strength_model"], lora["inputs"]["strength_clip"]) == (0.9, 0.3)
    again = injector(wf, params["loras"])  # injecting the same spec again adds no second chain
    assert sum(n["class_type"] == "LoraLoader" for n in again.values()) == 1


def test_install_on_one_instance_only(router_cls, tree, loras) -> None:
    patched, plain = router_cls(), router_cls()
    install_into_devserver(patched, schemas_dir=tree, loras_dir=loras)
    params = {"loras": [{"name": YORUBA, "strength": 0.5}]}
    wf_patched, _ = patched.process_workflow_chunk("x", params, chunk())
    wf_plain, _ = plain.process_workflow_chunk("x", params, chunk())
    lid = next(k for k, n in wf_patched.items() if n["class_type"] == "LoraLoader")
    assert wf_patched["1"]["inputs"]["clip"] == [lid, 1]
    assert wf_plain["1"]["inputs"]["clip"] == ["9", 0]


def test_missing_lora_refused_from_object_info(router_cls, tree, loras) -> None:
    info = json.loads((COMFY_FIXTURES / "object_info.json").read_text())
    install_into_devserver(router_cls, schemas_dir=tree, loras_dir=loras, object_info=info)
    with pytest.raises(ComfyValidationError) as exc:
        router_cls().process_workflow_chunk("x", yoruba_parameters(), chunk())
    assert f"LoRA '{YORUBA}' is not installed in ComfyUI; installed: tiny_sd3_bad_keys" in str(exc.value)


def test_install_refuses_a_missing_loras_folder(router_cls, tree, tmp_path: Path) -> None:
    original = router_cls._inject_lora_nodes
    with pytest.raises(DevserverLoraError, match="does not exist") as info:
        install_into_devserver(router_cls, schemas_dir=tree, loras_dir=tmp_path / "SwarmUI/Models/loras")
    assert "SwarmUI's Models/loras" in info.value.hint
    assert router_cls._inject_lora_nodes is original  # a refused install changes nothing


def test_bad_lora_items_and_bad_router(tree, loras) -> None:
    with pytest.raises(WorkflowError, match="LoRA #1 .* is invalid"):
        to_specs([{"name": "../../etc/passwd.safetensors", "strength": 1}])
    with pytest.raises(WorkflowError):
        to_specs([{"name": "a.safetensors", "weight": 1}])  # strict where configs are read
    assert [s.name for s in to_specs([{"name": "a.safetensors"}, {"name": "a.safetensors", "strength": 2}])] == [
        "a.safetensors"]
    with pytest.raises(DevserverLoraError, match="not DevServer's BackendRouter") as info:
        install_into_devserver(object(), schemas_dir=tree, loras_dir=loras)
    assert "schemas.engine.backend_router" in info.value.hint


def test_unknown_keys_in_devserver_entries_are_kept_and_logged_once(router_cls, tree, loras, caplog) -> None:
    install_into_devserver(router_cls, schemas_dir=tree, loras_dir=loras)
    entry = {"name": YORUBA, "strength": 0.7, "weight": 2, "note": "from a teacher's config"}
    with caplog.at_level(logging.WARNING, logger="devserver_lora"):
        for _ in range(3):
            wf, _ = router_cls().process_workflow_chunk("x", {"loras": [entry]}, chunk())
            lora = next(n for n in wf.values() if n["class_type"] == "LoraLoader")
            assert lora["inputs"]["strength_model"] == 0.7
    assert entry["weight"] == 2 and entry["note"]  # DevServer's entry is left as it was
    warnings = [r.getMessage() for r in caplog.records if "does not read" in r.getMessage()]
    assert len(warnings) == 1 and "note, weight" in warnings[0]


def test_a_graph_is_judged_by_its_own_model(loras, caplog) -> None:
    injector = LoraInjector(loras)
    qwen = qwen_like_chunk()["workflow"]
    with caplog.at_level(logging.WARNING, logger="devserver_lora"):
        left = injector(qwen, [{"name": YORUBA, "strength": 1}])
        injector(qwen, [{"name": YORUBA, "strength": 1}])
    # An SD3.5 LoRA (an interception config's, say) never goes into DevServer's Qwen-Image graph.
    assert left == qwen and not any("Lora" in n["class_type"] for n in left.values())
    skipped = [r.getMessage() for r in caplog.records if "does not fit the model of this graph" in r.getMessage()]
    assert len(skipped) == 1 and "qwen_image" in skipped[0] and QWEN_MODEL in skipped[0]
    # The same injector puts it into the SD3.5 graph: the model is read per graph, never set once for all.
    sd35 = injector(chunk()["workflow"], [{"name": YORUBA, "strength": 1}])
    assert sum(n["class_type"] == "LoraLoader" for n in sd35.values()) == 1
    strict = LoraInjector(loras, strict=True)
    with pytest.raises(LoraFileError, match="trained for sd35_large, but the graph renders qwen_image"):
        strict(qwen, [{"name": YORUBA}])


def _tiny_tree(root: Path, lora_config: str = "sd35_tiny_lora", lora: str = "tiny.safetensors") -> Path:
    """A tree whose LoRA config renders the tiny test model: its model file is learnt from the config's meta."""
    write_devserver_tree(root)
    (root / "chunks" / "output_image_tiny.json").write_text(json.dumps(tiny_sd3_chunk("output_image_tiny",
                                                                                      TINY_CKPT)))
    cfg = make_lora_output_config(lora_config, [LoraSpec(name=lora)], title="tiny", base_model="sd3:2:te=clip_l",
                                  output_chunk="output_image_tiny")
    (root / "configs/output" / f"{lora_config}.json").write_text(json.dumps(cfg.to_json_dict()))
    return root


def test_the_model_of_a_graph_is_learnt_from_the_lora_configs_meta(router_cls, tmp_path: Path) -> None:
    root = _tiny_tree(tmp_path / "schemas")
    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copyfile(COMFY_FIXTURES / "loras" / "tiny_sd3_kohya.safetensors", loras / "tiny.safetensors")
    shutil.copyfile(COMFY_FIXTURES / "loras" / "tiny_sd3_bad_keys.safetensors", loras / "bad.safetensors")
    injector = install_into_devserver(router_cls, schemas_dir=root, loras_dir=loras)
    assert injector.known_files == {TINY_CKPT: "sd3:2:te=clip_l"}
    tiny = tiny_sd3_chunk("output_image_tiny", TINY_CKPT)
    wf, _ = router_cls().process_workflow_chunk("x", {"loras": [{"name": "tiny.safetensors"}]}, tiny)
    assert sum(n["class_type"] == "LoraLoader" for n in wf.values()) == 1
    # A LoRA of the right family whose keys the model lacks is refused, not rendered without effect.
    with pytest.raises(LoraFileError, match="does not fit the model sd3:2:te=clip_l:(.|\n)*ComfyUI would skip 10 of its keys"):
        router_cls().process_workflow_chunk("x", {"loras": [{"name": "bad.safetensors"}]}, tiny)


def test_a_lora_installed_or_replaced_while_running_is_read_again(router_cls, tree, loras) -> None:
    install_into_devserver(router_cls, schemas_dir=tree, loras_dir=loras)
    params = {"loras": [{"name": "live.safetensors", "strength": 1.0}]}
    with pytest.raises(ComfyValidationError, match="'live.safetensors' is not installed"):
        router_cls().process_workflow_chunk("a street", params, chunk())
    zero_lora(loras / "live.safetensors", trigger_words=["adire"])  # installed while DevServer runs
    wf, _ = router_cls().process_workflow_chunk("a street", params, chunk())
    assert wf["10"]["inputs"]["value"] == "adire, a street"
    # Replaced on disk (new metadata, new size): the next render reads the new file.
    fresh = zero_lora(loras / "tmp.safetensors", trigger_words=["indigo cloth", "resist dye"])
    os.replace(fresh, loras / "live.safetensors")
    wf, _ = router_cls().process_workflow_chunk("a street", params, chunk())
    assert wf["10"]["inputs"]["value"] == "indigo cloth, resist dye, a street"


def test_apply_input_mappings_like_devserver() -> None:
    data = chunk()
    del data["input_mappings"]["negative_prompt"]  # node 11 is the second prompt target here
    data["input_mappings"]["prompt"] = [
        {"node_id": "10", "field": "inputs.value", "source": "{{PREVIOUS_OUTPUT}}"},
        {"node_id": "11", "field": "inputs.value"},
    ]
    c = parse_output_chunk(data)
    wf = copy.deepcopy(c.workflow)
    seed = apply_input_mappings(wf, c, {"prompt": "p", "width": "64", "cfg": "4.5", "seed": "random"}, rng=random.Random(1))
    assert wf["10"]["inputs"]["value"] == wf["11"]["inputs"]["value"] == "p"  # list of targets
    assert wf["3"]["inputs"]["width"] == 64 and wf["8"]["inputs"]["cfg"] == 4.5
    assert wf["8"]["inputs"]["seed"] == seed
    assert wf["3"]["inputs"]["height"] == 1024  # default from the mapping
    # DevServer's generation route draws seeds in 0..2^31-1; so do we.
    rng = random.Random(7)
    seeds = [apply_input_mappings(copy.deepcopy(c.workflow), c, {"seed": "random"}, rng=rng) for _ in range(2000)]
    assert SEED_MAX == 2**31 - 1 and max(seeds) <= SEED_MAX and min(seeds) >= 0 and max(seeds) > 2**30
    with pytest.raises(ConfigError, match="'width': 'wide' is not a number"):
        apply_input_mappings(copy.deepcopy(c.workflow), c, {"width": "wide"})
    with pytest.raises(ConfigError, match="whole number"):
        apply_input_mappings(copy.deepcopy(c.workflow), c, {"steps": "2.5"})


@pytest.fixture
def sd35_double():
    models = {
        "checkpoints": ["OfficialStableDiffusion/sd3.5_large.safetensors"],
        "text_encoders": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_enconly.safetensors"],
        "loras": [YORUBA, "other.safetensors"],
    }
    with ComfyDouble(models=models) as d:
        yield d


SMALL = {"WIDTH": "64", "HEIGHT": "64", "STEPS": "2"}


def test_stage4_runner_renders_yoruba_config(sd35_double: ComfyDouble) -> None:
    runner = Stage4Runner(SCHEMAS, sd35_double.url)
    result = runner.run("sd35_large_yoruba", "a market in Ibadan", seed=7, overrides=SMALL)
    assert result.images and result.images[0][:4] == b"\x89PNG"
    assert result.seed == 7 and [s.name for s in result.loras] == [YORUBA]
    assert result.prompt == "yoruba heritage, a market in Ibadan"
    sent = sd35_double.submissions[-1]
    assert sent["prompt_id"] == result.prompt_id
    wf = sent["prompt"]
    assert wf["3"]["inputs"]["width"] == 64 and wf["8"]["inputs"]["steps"] == 2 and wf["8"]["inputs"]["seed"] == 7
    assert wf["10"]["inputs"]["value"] == "yoruba heritage, a market in Ibadan"
    assert triggers_in(wf) == ["yoruba heritage"]
    assert sum(n["class_type"] == "LoraLoader" for n in wf.values()) == 1


async def test_stage4_follows_devservers_rule_for_interception_loras(sd35_double: ComfyDouble, tree: Path) -> None:
    runner = Stage4Runner(tree, sd35_double.url)
    interception = {"loras": [{"name": "other.safetensors", "strength": 0.4}], **SMALL}
    # The output config has LoRAs of its own: DevServer skips the interception's ("already in parameters").
    result = await runner.arun("sd35_large_yoruba", "x", overrides=interception)
    assert isinstance(result.seed, int) and 0 <= result.seed <= SEED_MAX
    assert [s.name for s in result.loras] == [YORUBA]
    wf = sd35_double.submissions[-1]["prompt"]
    assert wf["8"]["inputs"]["seed"] == result.seed
    assert [n["inputs"]["lora_name"] for n in wf.values() if n["class_type"] == "LoraLoader"] == [YORUBA]
    # An output config without LoRAs (here DevServer-shaped, on the ComfyUI chunk) takes the interception's.
    result = await runner.arun("sd35_large", "x", overrides=interception)
    assert [s.name for s in result.loras] == ["other.safetensors"]


async def test_stage4_sync_run_from_inside_an_event_loop(sd35_double: ComfyDouble) -> None:
    # DevServer's Stage 4 is async: the blocking facade must not deadlock when called from a running loop.
    result = Stage4Runner(SCHEMAS, sd35_double.url).run("sd35_large_yoruba", "y", seed=1, overrides=SMALL)
    assert result.images


def test_stage4_missing_lora_on_server(sd35_double: ComfyDouble) -> None:
    sd35_double.models["loras"] = ["other.safetensors"]
    with pytest.raises(ComfyValidationError, match=f"{YORUBA}' is not installed"):
        Stage4Runner(SCHEMAS, sd35_double.url).run("sd35_large_yoruba", "x", overrides=SMALL)
    assert not sd35_double.submissions


def test_stage4_refuses_the_diffusers_chunk(tree: Path) -> None:
    cfg = json.loads((tree / "configs" / "output" / "sd35_large_yoruba.json").read_text())
    cfg["parameters"]["OUTPUT_CHUNK"] = "output_image_sd35_diffusers"
    (tree / "configs" / "output" / "sd35_diffusers_lora.json").write_text(json.dumps(cfg))
    diff = chunk()
    diff.update(name="output_image_sd35_diffusers", backend_type="diffusers")
    (tree / "chunks" / "output_image_sd35_diffusers.json").write_text(json.dumps(diff))
    with pytest.raises(ConfigError, match="only ComfyUI chunks apply LoRAs"):
        Stage4Runner(tree, "http://127.0.0.1:9").prepare("sd35_diffusers_lora", "x")


def test_stage4_refuses_a_lora_in_a_graph_of_another_model(tree: Path, loras: Path) -> None:
    (tree / "chunks" / "output_image_qwen.json").write_text(json.dumps(qwen_like_chunk()))
    cfg = plain_config() | {"parameters": {"OUTPUT_CHUNK": "output_image_qwen", "loras": [{"name": YORUBA}]}}
    (tree / "configs" / "output" / "qwen_with_sd35_lora.json").write_text(json.dumps(cfg))
    with pytest.raises(LoraFileError, match="does not fit the model of this graph"):
        Stage4Runner(tree, None, loras_dir=loras).prepare("qwen_with_sd35_lora", "x")


def test_install_checks_only_lora_configs(router_cls, tree, loras) -> None:
    out = tree / "configs" / "output"
    (out / "acestep_music.json").write_text(json.dumps({"whatever": "DevServer's own shape"}))
    assert check_lora_configs(tree) == ["sd35_large_yoruba"]
    broken = json.loads((out / "sd35_large_yoruba.json").read_text())
    broken["lora"]["strength_model"] = 500
    (out / "broken_lora.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError) as info:
        install_into_devserver(router_cls, schemas_dir=tree, loras_dir=loras)
    assert "broken_lora.json" in str(info.value)


def test_install_refuses_a_lora_config_whose_chunk_devserver_lacks(router_cls, tree, loras) -> None:
    # The project's own chunks are a layer for offline commands; DevServer itself only has its tree.
    cfg = json.loads((tree / "configs/output/sd35_large_yoruba.json").read_text())
    cfg["parameters"]["OUTPUT_CHUNK"] = "output_image_sd35_large_triple_clip"
    (tree / "configs/output/sd35_large_te.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="sd35_large_te.json: .*not in .*chunks"):
        install_into_devserver(router_cls, schemas_dir=tree, loras_dir=loras)
