"""Offline validation reproduces ComfyUI's recorded 400 answers for the same bad graphs."""

from __future__ import annotations

import copy
import json
import re

import pytest
from conftest import COMFY_FIXTURES
from graphs import flux_graph, sd3_with_lora_graph, sd15_graph, sdxl_refiner_graph, wan_graph

from devserver_lora.errors import GraphValidationError, WorkflowError
from devserver_lora.graph.check import check_graph, comfy_response, graph_problems, load_object_info


@pytest.fixture(scope="module")
def object_info() -> dict:
    return load_object_info(COMFY_FIXTURES / "object_info.json")


def _recorded(name: str) -> dict:
    data = json.loads((COMFY_FIXTURES / f"post_prompt_400_{name}.json").read_text(encoding="utf-8"))
    assert data["http_status"] == 400
    return data["response"]


def _missing_lora(g: dict) -> None:
    g["2"]["inputs"]["lora_name"] = "does_not_exist.safetensors"


def _missing_input(g: dict) -> None:
    del g["2"]["inputs"]["lora_name"]


def _type_mismatch(g: dict) -> None:
    g["7"]["inputs"]["model"] = ["4", 0]  # CONDITIONING into KSampler.model


def _too_big(g: dict) -> None:
    g["2"]["inputs"]["strength_model"] = 500


def _unknown_class(g: dict) -> None:
    g["2"]["class_type"] = "LoraLoaderTypo"


def _no_outputs(g: dict) -> None:
    del g["9"]


@pytest.mark.parametrize(
    ("fixture", "breakage"),
    [
        ("missing_lora", _missing_lora),
        ("missing_required_input", _missing_input),
        ("return_type_mismatch", _type_mismatch),
        ("value_bigger_than_max", _too_big),
        ("unknown_class_type", _unknown_class),
        ("no_outputs", _no_outputs),
    ],
)
def test_same_answer_as_recorded_comfyui(object_info: dict, fixture: str, breakage) -> None:
    g = sd3_with_lora_graph()
    breakage(g)
    problems = graph_problems(g, object_info)
    assert problems, "the broken graph must be reported"
    assert comfy_response(problems) == _recorded(fixture)
    with pytest.raises(GraphValidationError) as err:
        check_graph(g, object_info)
    assert isinstance(err.value, WorkflowError)
    assert err.value.problems == problems


def test_recorded_graph_is_valid(object_info: dict) -> None:
    assert graph_problems(sd3_with_lora_graph(), object_info) == []
    assert comfy_response([]) == {}


def test_problem_wording_and_location(object_info: dict) -> None:
    g = sd3_with_lora_graph()
    _missing_lora(g)
    [p] = graph_problems(g, object_info)
    assert p.code == "value_not_in_list"
    assert p.path == "$.2.inputs.lora_name"
    assert "node '2' (LoraLoader): Value not in list: lora_name: 'does_not_exist.safetensors' not in [" in p.message
    assert p.hint and "install" in p.hint


def test_value_smaller_than_min_and_conversion(object_info: dict) -> None:
    g = sd3_with_lora_graph()
    g["7"]["inputs"]["steps"] = 0
    g["6"]["inputs"]["width"] = "wide"
    codes = {(p.extra["node_id"], p.code): p for p in graph_problems(g, object_info)}
    assert codes[("7", "value_smaller_than_min")].message.endswith("Value 0 smaller than min of 1: steps")
    bad = codes[("6", "invalid_input_type")].extra["comfy_error"]
    assert bad["message"] == "Failed to convert an input value to a INT value"
    assert bad["details"].startswith("width, wide, invalid literal for int()")


def test_strings_that_are_numbers_pass_as_comfyui_converts_them(object_info: dict) -> None:
    g = sd3_with_lora_graph()
    g["7"]["inputs"]["steps"] = "4"  # DevServer substitutes placeholders as strings
    g["7"]["inputs"]["cfg"] = "4.5"
    assert graph_problems(g, object_info) == []


def test_link_to_missing_node_and_wrong_output_index(object_info: dict) -> None:
    g = sd3_with_lora_graph()
    g["3"]["inputs"]["model"] = ["99", 0]
    [p] = graph_problems(g, object_info)
    assert p.code == "exception_during_inner_validation" and p.extra["node_id"] == "3"
    assert p.extra["comfy_error"]["details"] == "'99'"

    g = sd3_with_lora_graph()
    g["8"]["inputs"]["vae"] = ["1", 7]  # CheckpointLoaderSimple has 3 outputs
    [p] = graph_problems(g, object_info)
    assert p.code == "exception_during_inner_validation" and p.extra["node_id"] == "8"
    assert p.extra["comfy_error"]["details"] == "tuple index out of range"

    g = sd3_with_lora_graph()
    g["9"]["inputs"]["images"] = ["42", 0]
    [p] = graph_problems(g, object_info)
    assert p.code == "exception_during_validation" and p.extra["node_id"] == "9"


def test_bad_link_shape(object_info: dict) -> None:
    g = sd3_with_lora_graph()
    g["3"]["inputs"]["model"] = ["2", 0, 1]
    [p] = graph_problems(g, object_info)
    assert p.code == "bad_linked_input"


def test_dangling_nodes_are_not_validated_like_comfyui(object_info: dict) -> None:
    g = sd3_with_lora_graph()
    g["77"] = {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "nope", "clip_name2": "x", "clip_name3": "y"}}
    assert graph_problems(g, object_info) == []


def test_long_lists_are_not_echoed(object_info: dict) -> None:
    info = copy.deepcopy(object_info)
    info["LoraLoader"]["input"]["required"]["lora_name"][0] = [f"l{i}.safetensors" for i in range(25)]
    g = sd3_with_lora_graph()
    [p] = graph_problems(g, info)
    err = p.extra["comfy_error"]
    assert err["details"] == "lora_name: 'tiny_sd3_kohya.safetensors' not in (list of length 25)"
    assert err["extra_info"]["input_config"] is None


def test_dependent_outputs_and_several_nodes(object_info: dict) -> None:
    g = sd3_with_lora_graph()
    g["10"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "second"}}
    _missing_lora(g)
    body = comfy_response(graph_problems(g, object_info))
    assert body["node_errors"]["2"]["dependent_outputs"] == ["9", "10"]


def test_empty_and_non_graph(object_info: dict) -> None:
    assert [p.code for p in graph_problems({}, object_info)] == ["prompt_no_outputs"]
    assert [p.code for p in graph_problems([], object_info)] == ["no_prompt"]  # type: ignore[arg-type]
    assert comfy_response(graph_problems(None, object_info)) == _recorded("no_prompt")  # type: ignore[arg-type]
    g = {"1": {"inputs": {}}}
    [p] = graph_problems(g, object_info)
    assert p.code == "invalid_prompt" and "missing the class_type" in p.message


def test_hand_written_graphs_use_real_inputs(object_info: dict) -> None:
    """Our test graphs must be graphs ComfyUI accepts, apart from model files it does not have."""
    for graph in (sd15_graph(), sdxl_refiner_graph(), flux_graph(), wan_graph(), sd3_with_lora_graph()):
        problems = graph_problems(graph, object_info)
        assert all(p.code == "value_not_in_list" for p in problems), [str(p) for p in problems]
        for p in problems:
            assert re.fullmatch(r"\w+_name\d?", p.extra["comfy_error"]["extra_info"]["input_name"])
