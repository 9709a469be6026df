"""Error answers in the one shape the page reads (STUDIO_API.md):

    {"error": {"message", "hint", "fields": [{"field", "message", "hint"}]}}

`StudioRefusal` is raised by any route and turned into that body by the blueprint's error handler; the package's
own errors (DatasetError, PlanError, JobError ...) and pydantic's ValidationError are mapped to it too, so a field
named by `make_plan` (`$.hyper.learning_rate`) reaches the page as `hyper.learning_rate`.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from pydantic import ValidationError

from ..errors import DevserverLoraError, JobError, Problem, UnsafePathError


class StudioRefusal(Exception):
    def __init__(self, status: int, message: str, *, hint: str = "", fields: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.fields = list(fields or [])

    def response(self) -> tuple[Response, int]:
        body = {"error": {"message": self.message, "hint": self.hint, "fields": self.fields}}
        return jsonify(body), self.status


def field(name: str, message: str, hint: str = "") -> dict[str, str]:
    return {"field": name, "message": message, "hint": hint}


def _split_hint(message: str) -> tuple[str, str]:
    """make_plan's messages read "what is wrong: what to do"; the page shows the two apart."""
    head, sep, tail = message.partition(": ")
    return (head, tail) if sep and tail else (message, "")


def fields_from_validation(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        name = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body"
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            out.append(field(name, f"unknown setting {loc!r}", "remove it; the known settings are listed in /presets"))
            continue
        if e["type"] == "missing":
            out.append(field(name, "this field is required", "fill it in"))
            continue
        message, hint = _split_hint(msg)
        out.append(field(name, message, hint))
    return out


def fields_from_problems(problems: list[Problem], prefix: str = "") -> list[dict[str, str]]:
    out = []
    for p in problems:
        name = p.path.removeprefix("$").lstrip(".") or (p.file or "")
        message, hint = (p.message, p.hint) if p.hint else _split_hint(p.message)
        out.append(field(f"{prefix}{name}" if name else prefix.rstrip("."), message, hint or ""))
    return out


def refusal_from(exc: Exception, *, prefix: str = "") -> StudioRefusal:
    """The 400/404/409 answer for one of the package's own errors."""
    if isinstance(exc, ValidationError):
        return StudioRefusal(400, "the request is not valid", hint="change the fields named below",
                             fields=fields_from_validation(exc, prefix))
    if isinstance(exc, UnsafePathError):
        return StudioRefusal(400, exc.message, hint=exc.hint or "use letters, digits, '.', '_' and '-' only")
    if isinstance(exc, DevserverLoraError):
        problems: list[Problem] = list(getattr(exc, "problems", []) or [])
        status = 409 if isinstance(exc, JobError) else 400
        return StudioRefusal(status, exc.message, hint=exc.hint or "", fields=fields_from_problems(problems, prefix))
    raise exc


def problem_dict(p: Problem) -> dict[str, Any]:
    return {"severity": p.severity, "code": p.code, "message": p.message, "hint": p.hint or "", "file": p.file,
            "field": p.path.removeprefix("$").lstrip(".")}
