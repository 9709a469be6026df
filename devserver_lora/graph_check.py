"""Offline validation of ComfyUI API graphs against an object_info snapshot (signatures final)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import Problem


def validate_graph(graph: Mapping[str, Any], object_info: Mapping[str, Any]) -> list[Problem]:
    """Every problem ComfyUI's /prompt validation would report, as `Problem`s with ComfyUI's error types."""
    raise NotImplementedError("validate_graph is being written (issue 3)")


def check_graph(graph: Mapping[str, Any], object_info: Mapping[str, Any]) -> None:
    """Raise `GraphValidationError` if `validate_graph` finds any error."""
    raise NotImplementedError("check_graph is being written (issue 3)")
