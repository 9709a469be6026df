"""Offline validation of ComfyUI API graphs against an object_info snapshot, in ComfyUI's own words.

This mirrors what `POST /prompt` checks in ComfyUI v0.3.75 (`execution.validate_prompt` and
`validate_inputs`) so a bad graph is caught before anything is queued, and the report reads the
same as the server's 400 answer: the same error `type`, `message`, `details` and `extra_info`.
Like ComfyUI, only nodes that an output node depends on are validated (a dangling loader is not).

Each problem is a `Problem` whose `code` is ComfyUI's error type and whose `extra` holds the
node id, class type, ComfyUI's `details` and `extra_info`; `comfy_response(problems)` rebuilds
the 400 body ComfyUI would send.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import safe_json
from ..errors import GraphValidationError, Problem, WorkflowError

__all__ = ["graph_problems", "check_graph", "comfy_response", "load_object_info"]

_HINTS = {
    "value_not_in_list": "the server does not have this file or option; install it or pick one of the listed values",
    "required_input_missing": "add the input to the node (see the node's inputs in object_info)",
    "return_type_mismatch": "link an output of the type the input expects",
    "value_bigger_than_max": "lower the value to the allowed maximum",
    "value_smaller_than_min": "raise the value to the allowed minimum",
    "invalid_input_type": "give a value of the input's type",
    "bad_linked_input": "a link is [node_id, output_index]",
    "invalid_prompt": "the server lacks this node class: install the custom node or fix the class_type",
    "prompt_no_outputs": "add an output node such as SaveImage",
    "exception_during_validation": "a link points at a node or output that does not exist",
    "exception_during_inner_validation": "a link points at a node or output that does not exist",
}


def load_object_info(path: str | Path) -> dict[str, Any]:
    """Read a saved `GET /object_info` answer."""
    p = Path(path)
    try:
        return safe_json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkflowError(
            f"cannot read the object_info file {p}: {exc}",
            hint="save it with: curl http://127.0.0.1:8188/object_info > object_info.json",
        ) from None


def _problem(node_id: str | None, class_type: str | None, error: dict[str, Any], *, graph_level: bool = False) -> Problem:
    input_name = error.get("extra_info", {}).get("input_name")
    path = "$" if node_id is None else f"$.{node_id}" + (f".inputs.{input_name}" if input_name else "")
    where = "" if node_id is None else f"node '{node_id}' ({class_type}): "
    details = error.get("details", "")
    return Problem(
        message=f"{where}{error['message']}" + (f": {details}" if details and not graph_level else ""),
        path=path,
        code=error["type"],
        hint=_HINTS.get(error["type"]),
        extra={
            "node_id": node_id,
            "class_type": class_type,
            "comfy_error": error,
            "graph_level": graph_level,
        },
    )


def _input_conf(spec: Mapping[str, Any]) -> tuple[dict[str, tuple[Any, str, dict]], list[str]]:
    """`{name: (type, category, extra_info)}` and the input order (required first) of one class."""
    confs: dict[str, tuple[Any, str, dict]] = {}
    order: list[str] = []
    inputs = spec.get("input") or {}
    for category in ("required", "optional"):
        section = inputs.get(category) or {}
        listed = (spec.get("input_order") or {}).get(category) or list(section)
        for name in list(listed) + [n for n in section if n not in listed]:
            if name not in section or name in confs:
                continue
            conf = section[name]
            if not isinstance(conf, (list, tuple)) or not conf:
                continue
            extra = conf[1] if len(conf) > 1 and isinstance(conf[1], dict) else {}
            confs[name] = (conf[0], category, extra)
            order.append(name)
    return confs, order


def _types_match(received: Any, expected: Any) -> bool:
    # ComfyUI's validate_node_input: equal, or comma-separated unions that overlap; "*" is AnyType.
    if received == expected or received == "*" or expected == "*":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    a = {t.strip() for t in received.split(",")}
    b = {t.strip() for t in expected.split(",")}
    return bool(a & b)


# ComfyUI converts widget values of these types before checking ranges.
_CONVERTERS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


# Parsed input specs of the object_info last validated against. object_info answers are treated
# as read-only; the cache holds a reference, so the id cannot be reused while it lives.
_CONF_CACHE: tuple[Mapping[str, Any], dict[str, tuple[dict, list[str]]]] | None = None


def _conf_cache_for(object_info: Mapping[str, Any]) -> dict[str, tuple[dict, list[str]]]:
    global _CONF_CACHE
    if _CONF_CACHE is None or _CONF_CACHE[0] is not object_info:
        _CONF_CACHE = (object_info, {})
    return _CONF_CACHE[1]


class _Validator:
    def __init__(self, graph: Mapping[str, Any], object_info: Mapping[str, Any]) -> None:
        self.graph = graph
        self.info = object_info
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        self._conf_cache = _conf_cache_for(object_info)

    def conf(self, class_type: str) -> tuple[dict, list[str]]:
        if class_type not in self._conf_cache:
            self._conf_cache[class_type] = _input_conf(self.info[class_type])
        return self._conf_cache[class_type]

    def node(self, node_id: str, *, is_output: bool) -> bool:
        # Iterative post-order would be faster on huge graphs, but ComfyUI recurses too and
        # real graphs are shallow; the memo keeps it linear.
        if node_id in self.validated:
            return self.validated[node_id][0]
        self.validated[node_id] = (False, [])  # guards cycles: a node in progress counts as failed
        node = self.graph[node_id]
        inputs = node.get("inputs")
        if type(inputs) is not dict:
            inputs = {}  # ComfyUI would crash on it; reporting every required input as missing teaches more
        confs, order = self.conf(node["class_type"])
        errors: list[dict[str, Any]] = []
        valid = True
        for name in order:
            input_type, category, extra = confs[name]
            if name not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            val = inputs[name]
            info = [input_type, extra]
            if type(val) is list:
                if len(val) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            "details": name,
                            "extra_info": {"input_name": name, "input_config": info, "received_value": val},
                        }
                    )
                    continue
                src_id = str(val[0])
                src = self.graph.get(src_id)
                src_class = src.get("class_type") if type(src) is dict else None
                outputs = self.info.get(src_class, {}).get("output") if isinstance(src_class, str) else None
                if src is None or not isinstance(val[1], int) or outputs is None or not 0 <= val[1] < len(outputs):
                    # ComfyUI raises KeyError/IndexError here; the error lands on this node.
                    exc = f"'{src_id}'" if src is None else "tuple index out of range"
                    self.validated[node_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_validation" if is_output else "exception_during_inner_validation",
                                "message": "Exception when validating node" if is_output else "Exception when validating inner node",
                                "details": exc,
                                "extra_info": {
                                    "input_name": name,
                                    "linked_node": val,
                                    "exception_message": exc,
                                    "exception_type": "KeyError" if src is None else "IndexError",
                                },
                            }
                        ],
                    )
                    return False
                received = outputs[val[1]]
                if received != input_type and not _types_match(received, input_type):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received}) mismatch input_type({input_type})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_type": received,
                                "linked_node": val,
                            },
                        }
                    )
                    continue
                if not self.node(src_id, is_output=False):
                    valid = False
                continue
            if type(val) is dict and "__value__" in val:
                val = val["__value__"]
            try:
                convert = _CONVERTERS.get(input_type) if type(input_type) is str else None
                if convert is not None:
                    val = convert(val)
            except (TypeError, ValueError, OverflowError) as ex:
                errors.append(
                    {
                        "type": "invalid_input_type",
                        "message": f"Failed to convert an input value to a {input_type} value",
                        "details": f"{name}, {val}, {ex}",
                        "extra_info": {
                            "input_name": name,
                            "input_config": info,
                            "received_value": val,
                            "exception_message": str(ex),
                        },
                    }
                )
                continue
            if extra and ("min" in extra or "max" in extra):
                error = self._range(name, val, info, extra)
                if error:
                    errors.append(error)
                    continue
            if type(input_type) is list:
                error = self._listed(name, val, input_type, info)
                if error:
                    errors.append(error)
        ok = valid and not errors
        self.validated[node_id] = (ok, errors)
        return ok

    @staticmethod
    def _range(name: str, val: Any, info: list, extra: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            if "min" in extra and val < extra["min"]:
                kind, word, bound = "value_smaller_than_min", "smaller than min", extra["min"]
            elif "max" in extra and val > extra["max"]:
                kind, word, bound = "value_bigger_than_max", "bigger than max", extra["max"]
            else:
                return None
        except TypeError:
            return None
        return {
            "type": kind,
            "message": f"Value {val} {word} of {bound}",
            "details": name,
            "extra_info": {"input_name": name, "input_config": info, "received_value": val},
        }

    @staticmethod
    def _listed(name: str, val: Any, input_type: Any, info: list) -> dict[str, Any] | None:
        if not isinstance(input_type, list) or val in input_type:
            return None
        # ComfyUI does not echo gigantic lists (lots of scanned model paths).
        if len(input_type) > 20:
            list_info, config = f"(list of length {len(input_type)})", None
        else:
            list_info, config = str(input_type), info
        return {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": f"{name}: '{val}' not in {list_info}",
            "extra_info": {"input_name": name, "input_config": config, "received_value": val},
        }


def graph_problems(graph: Mapping[str, Any], object_info: Mapping[str, Any]) -> list[Problem]:
    """Every problem ComfyUI's `POST /prompt` validation would report for this graph, before queueing.

    `object_info` is a `GET /object_info` answer (the recorded snapshot, or a live server's dict).
    Problems carry ComfyUI's error type as `code` and ComfyUI's wording in `message`; a graph-level
    problem (unknown class, no outputs) has `extra["graph_level"]` set. An empty list means valid.
    """
    if not isinstance(graph, Mapping) or not graph:
        err = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}
        if isinstance(graph, Mapping):
            err = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}
        return [_problem(None, None, err, graph_level=True)]
    problems: list[Problem] = []
    outputs: list[str] = []
    for node_id, node in graph.items():
        node_id = str(node_id)
        if not isinstance(node, Mapping) or "class_type" not in node:
            err = {
                "type": "invalid_prompt",
                "message": "Cannot execute because a node is missing the class_type property.",
                "details": f"Node ID '#{node_id}'",
                "extra_info": {},
            }
            problems.append(_problem(node_id, None, err, graph_level=True))
            continue
        class_type = node["class_type"]
        spec = object_info.get(class_type)
        if spec is None:
            err = {
                "type": "invalid_prompt",
                "message": f"Cannot execute because node {class_type} does not exist.",
                "details": f"Node ID '#{node_id}'",
                "extra_info": {},
            }
            problems.append(_problem(node_id, class_type, err, graph_level=True))
            continue
        if spec.get("output_node") is True:
            outputs.append(node_id)
    if problems:
        # ComfyUI stops at the first such problem; we report them all, in graph order.
        return problems
    if not outputs:
        err = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}
        return [_problem(None, None, err, graph_level=True)]

    validator = _Validator(graph, object_info)
    node_errors: dict[str, tuple[list[dict[str, Any]], list[str]]] = {}
    for out in outputs:
        if validator.node(out, is_output=True):
            continue
        # As ComfyUI does: every failed node seen so far lists this output as dependent.
        for node_id, (ok, reasons) in validator.validated.items():
            if not ok and reasons:
                node_errors.setdefault(node_id, (reasons, []))[1].append(out)
    for node_id, (reasons, dependent) in node_errors.items():
        class_type = graph[node_id]["class_type"]
        for err in reasons:
            p = _problem(node_id, class_type, err)
            p.extra["dependent_outputs"] = dependent
            problems.append(p)
    return problems


def comfy_response(problems: list[Problem]) -> dict[str, Any]:
    """The body of the HTTP 400 answer ComfyUI would give for these problems (`{}` if none)."""
    if not problems:
        return {}
    first = problems[0]
    if first.extra.get("graph_level"):
        return {"error": first.extra["comfy_error"], "node_errors": {}}
    node_errors: dict[str, Any] = {}
    for p in problems:
        node_id = p.extra["node_id"]
        entry = node_errors.setdefault(
            node_id,
            {"errors": [], "dependent_outputs": list(p.extra.get("dependent_outputs", [])), "class_type": p.extra["class_type"]},
        )
        entry["errors"].append(p.extra["comfy_error"])
    error = {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    }
    return {"error": error, "node_errors": node_errors}


def check_graph(graph: Mapping[str, Any], object_info: Mapping[str, Any]) -> None:
    """Raise `GraphValidationError` (all problems attached) if ComfyUI would refuse this graph."""
    problems = graph_problems(graph, object_info)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise GraphValidationError(
            f"ComfyUI would refuse this workflow: {first.message}{more}",
            problems,
            hint=first.hint,
        )
