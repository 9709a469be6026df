"""ComfyUI's rules and recorded data for the test double (tests/comfy_double.py): no server here.

The fixtures it replays (tests/fixtures/comfyui), the fault switches, and pure functions that reproduce
what ComfyUI v0.3.75 decides: the 400 bodies of POST /prompt validation, the execution order
(its ExecutionList "output first" dissolve), per-node cache keys, and the PNG SaveImage writes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "comfyui"
STATUS_EXAMPLE = json.loads((FIXTURES / "system_stats.json").read_text())
ERROR_HISTORY = json.loads((FIXTURES / "history_error.json").read_text())
RECORDED_TRACEBACK = next(iter(ERROR_HISTORY.values()))["status"]["messages"][2][1]["traceback"]
# Which model folder feeds a combo input, by input name (object_info does not say).
FOLDER_OF_INPUT = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "vae_name": "vae",
    "unet_name": "diffusion_models",
}
SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Faults:
    drop_ws_after_frames: int | None = None  # abort each socket after this many frames of a run
    refuse_ws: bool = False  # /ws answers 503 instead of upgrading
    garbage_frames: bool = False  # interleave unparseable text and binary frames
    slow_http: float = 0.0  # seconds added to every HTTP answer
    history_delay: float = 0.02  # execution_success -> history written (clients must wait for executing null)
    fail_node: str | None = None  # node id that raises (recorded AssertionError)
    step_delay: float = 0.0  # seconds per sampler step (lets tests interrupt mid-run)
    drop_http_after_submit: bool = False  # server dies right after accepting a prompt (killed server)
    previews: bool = False  # send a preview frame (type 4, JSON metadata + JPEG) before each sampler step's progress


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def fill_model_lists(object_info: dict, models: dict[str, list[str]]) -> dict:
    """object_info as a live server answers it: combo lists of model inputs hold the files in `models`."""
    info = copy.deepcopy(object_info)
    for node in info.values():
        for section in ("required", "optional"):
            for name, spec in (node.get("input", {}).get(section) or {}).items():
                if name in FOLDER_OF_INPUT and isinstance(spec, list) and spec and isinstance(spec[0], list):
                    spec[0] = sorted(models.get(FOLDER_OF_INPUT[name], []))
    return info


def node_state(pid: str, nid: str, value: float, maximum: float, name: str) -> dict:
    """One node's entry of a `progress_state` message, as ComfyUI's progress registry reports it."""
    return {
        "value": value,
        "max": maximum,
        "state": name,
        "node_id": nid,
        "prompt_id": pid,
        "display_node_id": nid,
        "parent_node_id": None,
        "real_node_id": nid,
    }


def preview_frame(pid: str, nid: str) -> bytes:
    """PREVIEW_IMAGE_WITH_METADATA as server.py packs it: type 4, metadata length, metadata JSON, JPEG."""
    meta = {"node_id": nid, "prompt_id": pid, "display_node_id": nid, "parent_node_id": None, "real_node_id": nid}
    meta["image_type"] = "image/jpeg"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
    blob = json.dumps(meta).encode()
    return (4).to_bytes(4, "big") + len(blob).to_bytes(4, "big") + blob + buf.getvalue()


def output_nodes(object_info: dict, prompt: dict) -> list[str]:
    """Ids of the nodes ComfyUI runs for their own sake (output_node in object_info)."""
    return [nid for nid, node in prompt.items() if object_info.get(node.get("class_type"), {}).get("output_node")]

def prompt_error(kind: str, message: str, details: str = "") -> dict:
    """A graph-level 400 body of POST /prompt (execution.validate_prompt's shape: no node errors)."""
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}


def validate_prompt(object_info: dict, live_info: dict, prompt: Any) -> dict | None:
    """ComfyUI's 400 body for a prompt it would refuse, else None (`live_info`: object_info with model lists)."""
    for nid, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return prompt_error(
                "invalid_prompt", "Cannot execute because a node is missing the class_type property.", f"Node ID '#{nid}'"
            )
        if node["class_type"] not in object_info:
            return prompt_error(
                "invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.", f"Node ID '#{nid}'"
            )
    outputs = output_nodes(object_info, prompt)
    if not outputs:
        return prompt_error("prompt_no_outputs", "Prompt has no outputs")
    info = live_info
    node_errors: dict[str, dict] = {}
    for out in outputs:
        for nid in upstream(prompt, out):
            errors = check_node(object_info, prompt, nid, info)
            if errors:
                entry = node_errors.setdefault(
                    nid, {"errors": errors, "dependent_outputs": [], "class_type": prompt[nid]["class_type"]}
                )
                entry["dependent_outputs"].append(out)
    if node_errors:
        return {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": node_errors,
        }
    return None

def upstream(prompt: dict, start: str) -> list[str]:
    seen: list[str] = []
    stack = [start]
    while stack:
        nid = stack.pop()
        if nid in seen or nid not in prompt:
            continue
        seen.append(nid)
        stack += [v[0] for v in prompt[nid].get("inputs", {}).values() if is_link(v)]
    return seen

def check_node(object_info: dict, prompt: dict, nid: str, info: dict) -> list[dict]:
    node = prompt[nid]
    spec = info[node["class_type"]]
    inputs = node.get("inputs", {})
    errors = []
    for name in spec["input"].get("required") or {}:
        if name not in inputs:
            errors.append(
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": name,
                    "extra_info": {"input_name": name},
                }
            )
    all_inputs = {**(spec["input"].get("optional") or {}), **(spec["input"].get("required") or {})}
    for name, value in inputs.items():
        cfg = all_inputs.get(name)
        if cfg is None:
            continue
        kind = cfg[0]
        opts = cfg[1] if len(cfg) > 1 else {}
        if is_link(value):
            src = prompt.get(value[0])
            got = object_info.get(src["class_type"], {}).get("output", []) if src else []
            received = got[value[1]] if value[1] < len(got) else None
            if isinstance(kind, str) and received is not None and received != kind and kind != "*":
                errors.append(
                    {
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{name}, received_type({received}) mismatch input_type({kind})",
                        "extra_info": {
                            "input_name": name,
                            "input_config": cfg,
                            "received_type": received,
                            "linked_node": value,
                        },
                    }
                )
            continue
        if isinstance(kind, list) and value not in kind:
            errors.append(
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{name}: '{value}' not in {kind}",
                    "extra_info": {"input_name": name, "input_config": cfg, "received_value": value},
                }
            )
        elif kind in ("INT", "FLOAT"):
            try:
                num = int(value) if kind == "INT" else float(value)
            except (TypeError, ValueError):
                errors.append(
                    {
                        "type": "invalid_input_type",
                        "message": f"Failed to convert an input value to a {kind} value",
                        "details": f"{name}, {value}, invalid literal",
                        "extra_info": {"input_name": name, "input_config": cfg, "received_value": value},
                    }
                )
                continue
            if "max" in opts and num > opts["max"]:
                errors.append(
                    {
                        "type": "value_bigger_than_max",
                        "message": f"Value {num} bigger than max of {opts['max']}",
                        "details": name,
                        "extra_info": {"input_name": name, "input_config": cfg, "received_value": num},
                    }
                )
            if "min" in opts and num < opts["min"]:
                errors.append(
                    {
                        "type": "value_smaller_than_min",
                        "message": f"Value {num} smaller than min of {opts['min']}",
                        "details": name,
                        "extra_info": {"input_name": name, "input_config": cfg, "received_value": num},
                    }
                )
    return errors

# --- websocket ---


def signature(prompt: dict, nid: str, memo: dict[str, str]) -> str:
    """A node's cache key: its class and inputs, linked inputs replaced by their source's key."""
    if nid not in memo:
        node = prompt[nid]
        parts = {
            k: (["link", signature(prompt, v[0], memo), v[1]] if is_link(v) else v)
            for k, v in node.get("inputs", {}).items()
        }
        memo[nid] = hashlib.sha256(json.dumps([node["class_type"], parts], sort_keys=True).encode()).hexdigest()
    return memo[nid]

def execution_order(object_info: dict, prompt: dict, outputs: list[str], cached: set[str]) -> list[str]:
    """ComfyUI's ExecutionList: dissolve from the outputs, cached inputs are not added; pick outputs first."""
    pending: dict[str, bool] = {}
    block_count: dict[str, int] = {}
    blocking: dict[str, dict[str, bool]] = {}
    for out in outputs:
        stack, links = [out], []
        while stack:
            nid = stack.pop()
            if nid in pending:
                continue
            pending[nid] = True
            block_count[nid] = 0
            blocking[nid] = {}
            for value in prompt[nid].get("inputs", {}).values():
                if is_link(value) and value[0] not in cached:
                    stack.append(value[0])
                    links.append((value[0], nid))
        for src, dst in links:
            if dst not in blocking[src]:
                blocking[src][dst] = True
                block_count[dst] += 1

    def is_output(nid: str) -> bool:
        return bool(object_info.get(prompt[nid]["class_type"], {}).get("output_node"))

    order = []
    while pending:
        ready = [n for n in pending if block_count[n] == 0]
        pick = next((n for n in ready if is_output(n)), None)
        pick = pick or next((n for n in ready if any(is_output(b) for b in blocking[n])), None)
        pick = pick or next(
            (n for n in ready if any(is_output(b1) for b in blocking[n] for b1 in blocking[b])), None
        )
        pick = pick or ready[0]
        order.append(pick)
        del pending[pick]
        for b in blocking.pop(pick):
            block_count[b] -= 1
    return order

def render_png(prompt: dict) -> bytes:
    """A small PNG whose colour depends on the graph, with the graph embedded as SaveImage does."""
    digest = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).digest()
    img = Image.new("RGB", (64, 64), tuple(digest[:3]))
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(prompt))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def sd3_workflow(*, seed: int = 42, steps: int = 4, lora: str | None = "tiny_sd3_kohya.safetensors") -> dict:
    """The recorded SD3 LoRA workflow (fixtures/comfyui/sd3_lora_workflow_api.json) with a chosen seed/steps/LoRA."""
    wf = fixture("sd3_lora_workflow_api.json")
    wf["7"]["inputs"]["seed"] = seed
    wf["7"]["inputs"]["steps"] = steps
    if lora is None:
        del wf["2"]
        wf["3"]["inputs"]["model"] = ["1", 0]
        wf["4"]["inputs"]["clip"] = ["1", 1]
        wf["5"]["inputs"]["clip"] = ["1", 1]
    else:
        wf["2"]["inputs"]["lora_name"] = lora
    return wf
