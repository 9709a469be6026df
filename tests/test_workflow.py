"""LoRA injection on hand-written graphs of every family and on the real DevServer SD3.5 chunk."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import COMFY_FIXTURES
from graphs import (
    flux_graph,
    sd3_with_lora_graph,
    sd15_graph,
    sd35_chunk_workflow,
    sdxl_graph,
    sdxl_refiner_graph,
    wan_graph,
)

from devserver_lora.errors import WorkflowError
from devserver_lora.graph.api import derive_node_types, is_link, iter_links
from devserver_lora.graph.check import check_graph, graph_problems
from devserver_lora.graph.inject import clip_text_encoders, find_model_sources, inject_loras
from devserver_lora.lora.spec import LoraSpec

YORUBA = LoraSpec(name="yorubaheritage_sd35.safetensors", strength_model=0.85, strength_clip=0.85)


@pytest.fixture(scope="module")
def object_info() -> dict:
    return json.loads((COMFY_FIXTURES / "object_info.json").read_text(encoding="utf-8"))


def _new_nodes(before: dict, after: dict) -> dict:
    return {k: v for k, v in after.items() if k not in before}


def _only(nodes: dict) -> tuple[str, dict]:
    assert len(nodes) == 1, nodes
    return next(iter(nodes.items()))


def with_models(object_info: dict, **names: list[str]) -> dict:
    """A copy of object_info whose model lists also hold `names` ({"LoraLoader.lora_name": [...]})."""
    info = copy.deepcopy(object_info)
    for where, values in names.items():
        cls, field = where.split("__")
        for section in ("required", "optional"):
            conf = info[cls]["input"].get(section, {}).get(field)
            if conf is not None:
                conf[0] = list(conf[0]) + list(values)
    return info


def test_sd35_chunk_both_encoders_and_sampler_read_the_lora(object_info: dict) -> None:
    wf = sd35_chunk_workflow()
    before = copy.deepcopy(wf)
    out = inject_loras(wf, [YORUBA])
    assert wf == before, "the input graph must not be mutated"
    new_id, node = _only(_new_nodes(wf, out))
    assert node == {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["5", 0],
            "clip": ["9", 0],  # the DualCLIPLoader the encoders read, not the dangling TripleCLIPLoader "7"
            "lora_name": "yorubaheritage_sd35.safetensors",
            "strength_model": 0.85,
            "strength_clip": 0.85,
        },
        "_meta": {"title": "LoRA: yorubaheritage_sd35.safetensors"},
    }
    assert out["1"]["inputs"]["clip"] == [new_id, 1]
    assert out["6"]["inputs"]["clip"] == [new_id, 1]
    assert out["8"]["inputs"]["model"] == [new_id, 0]
    assert out["7"] == before["7"]
    assert out["2"]["inputs"]["vae"] == ["5", 2], "VAE still comes from the checkpoint"

    # Done-criterion: the injected chunk passes offline validation against the recorded server,
    # once that server is told about the model files the chunk names.
    info = with_models(
        object_info,
        LoraLoader__lora_name=["yorubaheritage_sd35.safetensors"],
        CheckpointLoaderSimple__ckpt_name=["OfficialStableDiffusion/sd3.5_large.safetensors"],
        DualCLIPLoader__clip_name1=["clip_g.safetensors"],
        DualCLIPLoader__clip_name2=["t5xxl_enconly.safetensors"],
    )
    assert graph_problems(out, info) == []
    check_graph(out, info)
    # Without the LoRA file on the server it is refused, in ComfyUI's words, before queueing.
    problems = graph_problems(out, with_models(object_info, CheckpointLoaderSimple__ckpt_name=[
        "OfficialStableDiffusion/sd3.5_large.safetensors"], DualCLIPLoader__clip_name1=["clip_g.safetensors"],
        DualCLIPLoader__clip_name2=["t5xxl_enconly.safetensors"]))
    assert [p.code for p in problems] == ["value_not_in_list"]
    assert problems[0].extra["node_id"] == new_id


def test_sd35_chunk_three_loras_chain_in_order() -> None:
    specs = [LoraSpec(name=f"l{i}.safetensors", strength_model=0.5 + i / 10) for i in range(3)]
    out = inject_loras(sd35_chunk_workflow(), specs)
    chain = []
    end = out["8"]["inputs"]["model"][0]
    while out[end]["class_type"] == "LoraLoader":
        chain.append(out[end]["inputs"]["lora_name"])
        assert out[end]["inputs"]["clip"][0] in {"9"} | set(out), "clip chained too"
        end = out[end]["inputs"]["model"][0]
    assert end == "5"
    assert chain == ["l2.safetensors", "l1.safetensors", "l0.safetensors"]
    clip_end = out["1"]["inputs"]["clip"]
    assert clip_end == out["6"]["inputs"]["clip"] == [out["8"]["inputs"]["model"][0], 1]


def test_sd15_rewires_clipsetlastlayer_not_the_encoders() -> None:
    wf = sd15_graph()
    out = inject_loras(wf, [LoraSpec(name="style.safetensors", strength_model=0.7, strength_clip=0.3)])
    new_id, node = _only(_new_nodes(wf, out))
    assert node["inputs"]["model"] == ["4", 0] and node["inputs"]["clip"] == ["4", 1]
    assert node["inputs"]["strength_clip"] == 0.3
    assert out["12"]["inputs"]["clip"] == [new_id, 1]
    assert out["6"]["inputs"]["clip"] == ["12", 0] and out["7"]["inputs"]["clip"] == ["12", 0]
    assert out["3"]["inputs"]["model"] == [new_id, 0]


def test_sdxl_checkpoint_clip() -> None:
    wf = sdxl_graph()
    out = inject_loras(wf, [LoraSpec(name="x.safetensors")])
    new_id, _ = _only(_new_nodes(wf, out))
    assert out["6"]["inputs"]["clip"] == out["7"]["inputs"]["clip"] == [new_id, 1]
    assert out["3"]["inputs"]["model"] == [new_id, 0]


def test_sdxl_refiner_needs_a_target_and_keeps_each_clip() -> None:
    wf = sdxl_refiner_graph()
    with pytest.raises(WorkflowError) as err:
        inject_loras(wf, [LoraSpec(name="x.safetensors")])
    assert "'4' (CheckpointLoaderSimple)" in str(err.value) and "'12' (CheckpointLoaderSimple)" in str(err.value)
    assert "target" in (err.value.hint or "")

    out = inject_loras(wf, [LoraSpec(name="x.safetensors", target="12")])
    new_id, node = _only(_new_nodes(wf, out))
    assert node["inputs"]["model"] == ["12", 0] and node["inputs"]["clip"] == ["12", 1]
    assert out["11"]["inputs"]["model"] == [new_id, 0]
    assert out["15"]["inputs"]["clip"] == out["16"]["inputs"]["clip"] == [new_id, 1]
    assert out["10"]["inputs"]["model"] == ["4", 0], "the base model is untouched"
    assert out["6"]["inputs"]["clip"] == ["4", 1], "the base encoders keep the base CLIP"

    with pytest.raises(WorkflowError, match="not a model source"):
        inject_loras(wf, [LoraSpec(name="x.safetensors", target="6")])


def test_flux_unet_and_dualclip() -> None:
    wf = flux_graph()
    out = inject_loras(wf, [LoraSpec(name="flux_style.safetensors", strength_model=0.9, strength_clip=0.0)])
    new_id, node = _only(_new_nodes(wf, out))
    assert node["class_type"] == "LoraLoader"
    assert node["inputs"]["model"] == ["12", 0] and node["inputs"]["clip"] == ["11", 0]
    assert out["30"]["inputs"]["model"] == [new_id, 0]  # ModelSamplingFlux
    assert out["6"]["inputs"]["clip"] == [new_id, 1]  # CLIPTextEncodeFlux
    assert out["22"]["inputs"]["model"] == ["30", 0] and out["17"]["inputs"]["model"] == ["30", 0]


def test_flux_model_only_when_lora_has_no_text_encoder() -> None:
    wf = flux_graph()
    out = inject_loras(wf, [LoraSpec(name="f.safetensors")], lora_info={"f.safetensors": False})
    new_id, node = _only(_new_nodes(wf, out))
    assert node["class_type"] == "LoraLoaderModelOnly"
    assert set(node["inputs"]) == {"model", "lora_name", "strength_model"}
    assert out["6"]["inputs"]["clip"] == ["11", 0]
    # A report-like object is read through its has_text_encoder attribute.
    out2 = inject_loras(wf, [LoraSpec(name="f.safetensors")], lora_info={"f.safetensors": {"has_text_encoder": False}})
    assert out2 == out


def test_graph_without_clip_path_gets_model_only() -> None:
    wf = flux_graph()
    # Conditioning from elsewhere: no text encoder reads any CLIP.
    wf["6"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["26", 0]}}
    wf["26"] = {"class_type": "StyleModelApply", "inputs": {}}
    del wf["11"]
    out = inject_loras(wf, [LoraSpec(name="f.safetensors")])
    _, node = _only(_new_nodes(wf, out))
    assert node["class_type"] == "LoraLoaderModelOnly"


def test_wan_two_unets_target_each_with_nonnumeric_ids() -> None:
    wf = wan_graph()
    with pytest.raises(WorkflowError) as err:
        inject_loras(wf, [LoraSpec(name="wan.safetensors")])
    assert "unet_high_noise" in str(err.value) and "unet_low_noise" in str(err.value)
    specs = [
        LoraSpec(name="wan_high.safetensors", target="unet_high_noise"),
        LoraSpec(name="wan_low.safetensors", target="unet_low_noise"),
    ]
    out = inject_loras(wf, specs, lora_info={"wan_high.safetensors": False, "wan_low.safetensors": False})
    new = _new_nodes(wf, out)
    assert len(new) == 2 and all(n["class_type"] == "LoraLoaderModelOnly" for n in new.values())
    high = next(k for k, n in new.items() if n["inputs"]["lora_name"] == "wan_high.safetensors")
    low = next(k for k, n in new.items() if n["inputs"]["lora_name"] == "wan_low.safetensors")
    assert out["54"]["inputs"]["model"] == [high, 0] and out["55"]["inputs"]["model"] == [low, 0]
    assert all(k not in wf for k in new) and all(k.isdigit() for k in new)
    assert out["115:110"]["inputs"]["clip"] == ["38", 0]


def test_same_file_on_both_wan_experts_patches_shared_clip_once() -> None:
    specs = [LoraSpec(name="w.safetensors", target="unet_high_noise"), LoraSpec(name="w.safetensors", target="unet_low_noise")]
    out = inject_loras(wan_graph(), specs)
    classes = sorted(n["class_type"] for k, n in out.items() if k not in wan_graph())
    assert classes == ["LoraLoader", "LoraLoaderModelOnly"]


def test_existing_lora_chain_is_extended_not_bypassed() -> None:
    wf = sd3_with_lora_graph()
    out = inject_loras(wf, [LoraSpec(name="second.safetensors", strength_model=0.5)])
    new_id, node = _only(_new_nodes(wf, out))
    assert node["inputs"]["model"] == ["2", 0] and node["inputs"]["clip"] == ["2", 1]
    assert out["3"]["inputs"]["model"] == [new_id, 0]
    assert out["4"]["inputs"]["clip"] == out["5"]["inputs"]["clip"] == [new_id, 1]
    assert out["2"] == wf["2"]
    # The file already in the chunk's chain is not added a second time...
    assert inject_loras(wf, [LoraSpec(name="tiny_sd3_kohya.safetensors")]) == wf
    # ...unless the config asks for other strengths: that is said, not silently ignored.
    with pytest.raises(WorkflowError, match="already applied by node '2'") as err:
        inject_loras(wf, [LoraSpec(name="tiny_sd3_kohya.safetensors", strength_model=0.4)])
    assert "1.0/1.0" in str(err.value) and "0.4/0.4" in str(err.value)


def test_devserver_half_wired_lora_does_not_swallow_the_clip() -> None:
    """DevServer's own injector chains a LoraLoader from the CLIP loader but leaves the encoders on it."""
    wf = sd35_chunk_workflow()
    wf["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["5", 0], "clip": ["9", 0], "lora_name": "up.safetensors",
                                                        "strength_model": 0.9, "strength_clip": 0.9}}
    wf["8"]["inputs"]["model"] = ["20", 0]
    out = inject_loras(wf, [YORUBA])
    new_id, node = _only(_new_nodes(wf, out))
    assert node["class_type"] == "LoraLoader"
    assert node["inputs"]["model"] == ["20", 0], "the model chain is extended"
    assert node["inputs"]["clip"] == ["9", 0], "the CLIP the encoders really read"
    assert out["1"]["inputs"]["clip"] == out["6"]["inputs"]["clip"] == [new_id, 1]
    assert out["8"]["inputs"]["model"] == [new_id, 0]
    assert out["20"]["inputs"]["clip"] == ["9", 0], "rewiring the loader our node reads from would close a cycle"


def test_idempotent_and_deterministic() -> None:
    specs = [YORUBA, LoraSpec(name="b.safetensors", strength_model=0.3)]
    once = inject_loras(sd35_chunk_workflow(), specs)
    assert inject_loras(once, specs) == once
    assert inject_loras(sd35_chunk_workflow(), specs) == once
    assert json.dumps(once, sort_keys=True) == json.dumps(inject_loras(sd35_chunk_workflow(), specs), sort_keys=True)


def test_new_ids_skip_taken_ids() -> None:
    wf = sd15_graph()
    wf["13"] = {"class_type": "Note", "inputs": {}}  # next numeric id is taken by an unrelated node
    out = inject_loras(wf, [LoraSpec(name="s.safetensors")])
    new_id, _ = _only(_new_nodes(wf, out))
    assert new_id == "14"


def test_all_links_resolve_after_injection() -> None:
    for graph in (sd35_chunk_workflow(), sd15_graph(), sdxl_graph(), flux_graph(), sd3_with_lora_graph()):
        out = inject_loras(graph, [LoraSpec(name="z.safetensors")])
        for consumer, name, src, _ in iter_links(out):
            assert src in out, (consumer, name, src)


def test_unknown_custom_node_classes_are_read_from_their_edges() -> None:
    wf = sdxl_graph()
    wf["4"]["class_type"] = "CheckpointLoader|pysssss"  # a custom loader not in object_info
    out = inject_loras(wf, [LoraSpec(name="s.safetensors")])
    new_id, node = _only(_new_nodes(wf, out))
    assert node["inputs"]["model"] == ["4", 0] and node["inputs"]["clip"] == ["4", 1]
    assert out["6"]["inputs"]["clip"] == [new_id, 1]


def test_odd_ids() -> None:
    wf = sd15_graph()
    wf["²"] = {"class_type": "Note", "inputs": {}}  # isdigit() but not an int
    wf["0012"] = {"class_type": "Note", "inputs": {}}
    out = inject_loras(wf, [LoraSpec(name="s.safetensors")])
    new_id, _ = _only(_new_nodes(wf, out))
    assert new_id == "13"
    as_ints = {int(k): v for k, v in sd15_graph().items()}
    out = inject_loras(as_ints, [LoraSpec(name="s.safetensors")])  # type: ignore[arg-type]
    assert all(isinstance(k, str) for k in out) and out["3"]["inputs"]["model"] == ["13", 0]


def test_no_model_source_is_a_clear_error() -> None:
    with pytest.raises(WorkflowError, match="no model source"):
        inject_loras({"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 8, "height": 8, "batch_size": 1}}},
                     [LoraSpec(name="a.safetensors")])
    with pytest.raises(WorkflowError, match="not a ComfyUI API node"):
        inject_loras({"1": "nope"}, [LoraSpec(name="a.safetensors")])


def test_find_model_sources_reports_existing_chain() -> None:
    [src] = find_model_sources(sd3_with_lora_graph())
    assert (src.node_id, src.chain, src.end) == ("1", ("2",), ("2", 0))


def test_shipped_node_type_table_matches_recorded_object_info(object_info: dict) -> None:
    from importlib import resources

    shipped = json.loads(resources.files("devserver_lora.graph").joinpath("node_types.json").read_text(encoding="utf-8"))
    assert shipped == derive_node_types(object_info), (
        "devserver_lora/graph/node_types.json is stale: run `python -m devserver_lora.graph.api`"
    )


def test_is_link() -> None:
    assert is_link(["4", 0]) and is_link(("4", 1))
    assert not is_link(["4", True]) and not is_link([1.0, 0]) and not is_link(["a", "b"]) and not is_link([1, 2, 3])


def test_clip_text_encoders_of_the_patched_clip() -> None:
    out = inject_loras(sd35_chunk_workflow(), [YORUBA])
    [lora] = [k for k, n in out.items() if n["class_type"] == "LoraLoader"]
    # DevServer's chunk reads DualCLIPLoader(clip_g, t5xxl): no CLIP-L (see loras ARCHS["sd35_large_dualclip"]).
    assert clip_text_encoders(out, lora) == ("clip_g", "t5xxl")
    flux = inject_loras(flux_graph(), [LoraSpec(name="f.safetensors")])
    [lora] = [k for k, n in flux.items() if n["class_type"] == "LoraLoader"]
    assert clip_text_encoders(flux, lora) == ("clip_l", "t5xxl")
    sd15 = inject_loras(sd15_graph(), [LoraSpec(name="f.safetensors")])
    assert clip_text_encoders(sd15, "13") is None  # a checkpoint's own CLIP: unknown from the graph
    wf = sd35_chunk_workflow()
    wf["9"]["inputs"]["clip_name1"] = "encoder_a.safetensors"
    assert clip_text_encoders(inject_loras(wf, [YORUBA]), "12") is None
    wan = inject_loras(wan_graph(), [LoraSpec(name="w.safetensors", target="unet_high_noise")])
    assert clip_text_encoders(wan, "61") is None  # umt5: not SD3's T5-XXL
