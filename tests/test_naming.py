"""One naming rule for checks across the package (issue 10 item 14):

    check_*      raises when something is wrong (DevserverLoraError); what it returns is not a verdict
    *_problems   returns every finding as a list of `Problem` and raises for none of them
    *_check      the doctor's items: returns one `Check` (ok, or the step left to do)

A function annotated to return `list[Problem]` must be named `*_problems` (or `problems`, a model's own method),
unless it is listed in NOT_PROBLEMS with its reason; a `check_*` function must not return findings, and must raise
(itself, or through a `check_*` it calls).
"""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "devserver_lora"
# Functions that return a list of Problem under another name, each with the reason.
NOT_PROBLEMS: dict[str, str] = {
    "preflight": "the Backend protocol's method: every finding about a job's setup, run before training",
    "blockers": "filters a list of findings down to the blocking ones",
    "errors": "a report's findings of severity error (a view of the report, like the `errors` properties)",
}


# Names not yet renamed because their files are being changed by another engineer right now, each with the reason.
# An entry that no longer occurs fails the test, so this list cannot go stale.
KNOWN: dict[str, str] = {}


def _functions() -> list[tuple[str, int, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method of the package, except properties (a report's `errors` is a view, not a check)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not any(
                    isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
                found.append((rel, node.lineno, node))
    return found


def _returns(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    return ast.unparse(node.returns) if node.returns is not None else ""


def _raises(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Raise):
            return True
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name.lstrip("_").startswith("check_") and name != node.name:
                return True
    return False


def test_functions_returning_problems_are_named_problems() -> None:
    wrong = [
        f"{rel}:{line}: {node.name}() returns {_returns(node)}: name it {node.name.removeprefix('check_')}_problems"
        for rel, line, node in _functions()
        if "Problem" in _returns(node) and _returns(node).replace(" ", "").startswith("list[")
        and not node.name.lstrip("_").endswith("problems") and node.name.lstrip("_") not in NOT_PROBLEMS
        and node.name not in KNOWN
    ]
    assert not wrong, "functions returning findings must be named *_problems:\n" + "\n".join(wrong)


def test_check_functions_raise_and_return_no_findings() -> None:
    wrong = []
    for rel, line, node in _functions():
        name = node.name.lstrip("_")
        if not name.startswith("check_") or node.name in KNOWN:
            continue
        if "Problem" in _returns(node) or "Check" in _returns(node):
            wrong.append(f"{rel}:{line}: {node.name}() returns {_returns(node)} instead of raising")
        elif not _raises(node):
            wrong.append(f"{rel}:{line}: {node.name}() never raises: a check_* function raises when it fails")
    assert not wrong, "check_* functions raise:\n" + "\n".join(wrong)


def test_known_exceptions_still_occur() -> None:
    names = {node.name for _, _, node in _functions()}
    stale = sorted(set(KNOWN) - names)
    assert not stale, f"renamed already: remove {stale} from KNOWN in tests/test_naming.py"
