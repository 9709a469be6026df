"""Checks before a graph is submitted: every LoRA it names is installed, and (where we can read the file) fits.

ComfyUI refuses a missing LoRA with a 400 we can parse, but a LoRA whose keys do not match the model is accepted
and only LOGGED ("lora key not loaded"); the student gets an image without the LoRA's effect and no error. So we
run the one fit check (`devserver_lora.lora.fit`) on every LoRA of the graph before submitting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from ..errors import ComfyProtocolError, ComfyValidationError, LoraFileError
from ..graph.inject import clip_text_encoders
from ..graph.model import GraphModel
from ..lora.fit import ARCHS, ArchSpec, check_fit, resolve_arch
from ..lora.keys import TextEncoder
from ..lora.report import ARCH_KEY, LoraReport
from ..paths import safe_join
from .protocol import missing_lora_hint


def lora_nodes_in(workflow: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(node id, class_type, lora_name) of every LoRA loader in the graph, in node order."""
    found = []
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping):
            continue
        inputs = node.get("inputs") or {}
        name = inputs.get("lora_name") if isinstance(inputs, Mapping) else None
        class_type = str(node.get("class_type", ""))
        if isinstance(name, str) and "lora" in class_type.lower():
            found.append((str(node_id), class_type, name))
    return found


def lora_names_in(workflow: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for _, _, name in lora_nodes_in(workflow):
        if name not in names:
            names.append(name)
    return names


def missing_lora_error(missing: list[tuple[str, str, str]], installed: list[str]) -> ComfyValidationError:
    shown = ", ".join(installed) if installed else "(none)"
    lines = [f"node {nid} ({cls}): LoRA {name!r} is not installed in ComfyUI; installed: {shown}" for nid, cls, name in missing]
    # Same shape as ComfyUI's own 400 so callers handle both alike.
    node_errors = {
        nid: {
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"lora_name: '{name}' not in {installed}",
                    "extra_info": {"input_name": "lora_name", "received_value": name},
                }
            ],
            "dependent_outputs": [],
            "class_type": cls,
        }
        for nid, cls, name in missing
    }
    return ComfyValidationError(
        "the graph needs LoRAs this ComfyUI does not have:\n  " + "\n  ".join(lines),
        hint=missing_lora_hint(),
        error={"type": "lora_not_installed", "message": "LoRA not installed"},
        node_errors=node_errors,
    )


def check_installed(workflow: Mapping[str, Any], installed: list[str]) -> None:
    """Raise ComfyValidationError when a LoRA loader names a file that is not in `installed`."""
    have = set(installed)
    # ComfyUI lists subfolder files with '/' on every OS; accept a Windows-style name for the same file.
    missing = [n for n in lora_nodes_in(workflow) if n[2] not in have and n[2].replace("\\", "/") not in have]
    if missing:
        raise missing_lora_error(missing, installed)


def installed_from_object_info(object_info: Mapping[str, Any]) -> list[str]:
    """The LoRA names a server's object_info offers (LoraLoader's `lora_name` choices)."""
    try:
        names = object_info["LoraLoader"]["input"]["required"]["lora_name"][0]
    except (KeyError, IndexError, TypeError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ComfyProtocolError(
            "object_info has no LoraLoader with a list of lora_name choices, so the installed LoRAs are unknown",
            hint="this is not ComfyUI's object_info (or its LoraLoader changed): pass the server's own answer",
        )
    return list(names)


def arch_as_wired(workflow: Mapping[str, Any], node_id: str, base: ArchSpec) -> ArchSpec:
    """`base` with the text encoders that LoRA node `node_id` really patches, as the graph wires them.

    ComfyUI maps text-encoder keys by what the CLIP object holds: the DevServer SD3.5 chunk loads
    only CLIP-G + T5, and there a LoRA's CLIP-L and CLIP-G keys would be dropped. So the check uses
    the graph's encoders, not the model family's full set.
    """
    if base.family != "sd3":
        return base
    encoders = cast("tuple[TextEncoder, ...] | None", clip_text_encoders(workflow, node_id))  # names it knows only
    return dataclasses.replace(base, text_encoders=encoders) if encoders else base


def check_fit_in_graph(
    workflow: Mapping[str, Any], node_id: str, lora: str | Path | LoraReport, arch: str | ArchSpec
) -> None:
    """Raise LoraFileError when the LoRA of loader `node_id` does not fit `arch` as the graph wires it.

    The fit check is `lora.fit`'s (shapes, then each key ComfyUI would skip), with the text encoders the graph
    really feeds that loader; a LoraLoaderModelOnly patches no text encoder, so its text-encoder keys count as
    not loaded.
    """
    node = workflow[node_id]
    class_type = str(node.get("class_type", ""))
    name = (node.get("inputs") or {}).get("lora_name")
    check_fit(lora, arch_as_wired(workflow, node_id, resolve_arch(arch)),
              with_clip="modelonly" not in class_type.lower(), name=name if isinstance(name, str) else None)


def check_fits(workflow: Mapping[str, Any], loras_dir: str | Path, arch: str | ArchSpec) -> None:
    """Raise LoraFileError when a LoRA of the graph that we can read in `loras_dir` does not fit `arch`.

    `arch`: a name in `ARCHS` (e.g. "sd35_large") or an `ArchSpec`. Files not in `loras_dir` are not judged (e.g.
    ComfyUI on another machine; the server-side list was checked already).
    """
    for node_id, _, name in lora_nodes_in(workflow):
        path = safe_join(loras_dir, name, what="LoRA name")
        if path.is_file():
            check_fit_in_graph(workflow, node_id, path, arch)


def lora_model(report: LoraReport) -> tuple[str | None, str | None]:
    """(arch, family) a LoRA was trained for: its own `devserver_lora.arch` label, else what its keys show."""
    label = report.metadata.get(ARCH_KEY)
    if label:
        try:
            return label, resolve_arch(label).family
        except LoraFileError:
            pass
    family = report.family if report.family not in ("unknown", "unet") else None
    return (report.architecture if report.architecture in ARCHS else None), family


def model_mismatch(name: str, report: LoraReport | None, model: GraphModel | None) -> str | None:
    """Why LoRA `name` does not belong in a graph rendering `model` (another model family), or None.

    Only a clear difference counts: an unreadable LoRA, or a graph whose model nothing tells, is not judged here.
    """
    if report is None or model is None or model.family is None:
        return None
    arch, family = lora_model(report)
    if family is None or family == model.family:
        return None
    return (f"LoRA {name!r} does not fit the model of this graph: it was trained for {arch or family}, but the graph "
            f"renders {model.label()} (from {model.evidence})")
