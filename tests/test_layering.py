"""Data flows one way; no module imports a layer above its own (lazy imports inside functions included).

Core, lowest first: config -> LoRA specs -> graph -> client -> images. Training: dataset -> plan -> backend ->
LoRA file -> install. The core never imports `train`; `train` may use the core's lower layers (and the ComfyUI
client only for the demo). `devserver_lora.testing` (tiny models for tests) stays out of the product path.
Every module must be placed in a layer, so a new module has to be put somewhere on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "devserver_lora"

CORE_LAYERS: list[set[str]] = [
    {"", "errors", "paths", "safe_json", "invocation"},
    {"lora", "lora.spec", "lora.header", "lora.keys", "lora.triggers", "graph", "graph.api", "config"},
    {"lora.report", "config.models", "config.kinds", "config.chunks"},
    {"lora.fit", "config.files", "graph.inject", "graph.model", "graph.check"},
    {"config.make", "config.tree", "config.validate"},
    {"comfy"},
    {"devserver"},
    {"commands", "cli", "console", "__main__"},
]
TRAIN_LAYERS: list[set[str]] = [
    {"train", "train.settings", "train.events", "train.card", "train.families", "train.presets"},
    {"train.dataset"},
    {"train.memory", "train.gpu", "train.plan"},
    {"train.jobs"},
    # What a running job writes about itself: eval settings, samples, the loss plot, the report (backends use them).
    {"train.evaluate.settings", "train.evaluate.pngtext", "train.evaluate.samples", "train.evaluate.lossplot",
     "train.evaluate.results", "train.evaluate.sheets", "train.evaluate.metrics", "train.evaluate.report_html",
     "train.evaluate.report", "train.evaluate.live", "train.evaluate.listing"},
    {"train.kohya", "train.native", "train.backends", "train.runner"},
    {"train.install", "train.gpu_queue"},
    {"train.progress_view"},
    # `evaluate`: renders through ComfyUI, so it sits with the demo above everything it evaluates.
    {"train.evaluate", "train.evaluate.render", "train.evaluate.run"},
    {"train.demo"},
    {"train.commands", "train.cli", "train.__main__"},
    # The LoRA Studio (web page + REST API) serves all of training; nothing in training imports it.
    {"studio"},
]
TESTING = "testing"
ROOT_ATTRIBUTES = ("__version__",)
TESTING_USERS = ("train.native", "train.demo", "commands", "train.commands")
# What training may use of the core: everything below the client; the client only where a demo renders.
TRAIN_MAY_USE_CORE_RANK = 4
COMFY_USERS = ("train.demo", "train.commands", "train.evaluate.render", "train.evaluate.run", "studio")
# The CLI starts the Studio (`devserver-lora studio`): that one command module may import it.
STUDIO_STARTERS = ("commands.studio_cmds",)
CONSOLE_USERS = ("train.commands", "train.cli", "train.progress_view")

# Known violations that are not ours to fix yet (files owned by another engineer), each with its reason.
# Keep this list short; an entry that no longer occurs fails the test, so it cannot go stale.
KNOWN: dict[tuple[str, str], str] = {}


def _layer_table() -> dict[str, tuple[str, int]]:
    table = {name: ("core", rank) for rank, names in enumerate(CORE_LAYERS) for name in names}
    table.update({name: ("train", rank) for rank, names in enumerate(TRAIN_LAYERS) for name in names})
    table[TESTING] = ("testing", 0)
    return table


LAYERS = _layer_table()


def layer_key(module: str) -> str | None:
    """The layer table's key for a dotted module name below devserver_lora ('' is the package itself)."""
    parts = module.split(".") if module else []
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key
    # The package itself, and names its __init__ defines (`from . import __version__`).
    return "" if module in ("", *ROOT_ATTRIBUTES) else None


def imports_of(source: str, module: str, *, is_package: bool) -> list[tuple[str, int]]:
    """(imported module below devserver_lora, line) for every import in `source`, at any depth of the code."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["devserver_lora", *package.split(".")] if package else ["devserver_lora"]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                names = [f"{prefix}.{node.module}"] if node.module else [f"{prefix}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            if name == "devserver_lora" or name.startswith("devserver_lora."):
                found.append((name.removeprefix("devserver_lora").lstrip("."), node.lineno))
    return found


def violation(importer: str, imported: str) -> str | None:
    """Why `importer` must not import `imported` (module names below devserver_lora), or None if it may."""
    src_key, dst_key = layer_key(importer), layer_key(imported)
    if src_key is None or dst_key is None:
        missing = importer if src_key is None else imported
        return f"{missing!r} is in no layer: add it to CORE_LAYERS or TRAIN_LAYERS of tests/test_layering.py"
    (src_group, src_rank), (dst_group, dst_rank) = LAYERS[src_key], LAYERS[dst_key]
    under = lambda prefixes: any(importer == p or importer.startswith(p + ".") for p in prefixes)  # noqa: E731
    if dst_group == "testing":
        if src_group == "testing" or under(TESTING_USERS):
            return None
        return "only tests, bench, train.native, train.demo and commands may import devserver_lora.testing"
    if src_group == "testing":
        return None if dst_group == "core" and dst_rank <= 1 else "testing may use errors/paths/lora_* only"
    if src_group == "core" and dst_group == "train":
        if dst_key == "studio" and under(STUDIO_STARTERS):
            return None
        return "the core never imports train (data flows from training into the core's files, not back)"
    if src_group == "train" and dst_group == "core":
        if dst_key == "comfy":
            return None if under(COMFY_USERS) else "training talks to ComfyUI only in the demo and its commands"
        if dst_key == "console":
            return None if under(CONSOLE_USERS) else "only the CLI layer prints (use events and return values)"
        if dst_rank > TRAIN_MAY_USE_CORE_RANK:
            return f"training may not import the core's {dst_key!r} (above graph_check)"
        return None
    if dst_rank > src_rank:
        return f"{src_key!r} (layer {src_rank}) imports the higher layer {dst_key!r} (layer {dst_rank})"
    return None


def package_modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def find_violations() -> tuple[list[str], set[tuple[str, str]]]:
    problems, known_seen = [], set()
    for module, (path, is_package) in package_modules().items():
        for imported, line in imports_of(path.read_text(encoding="utf-8"), module, is_package=is_package):
            why = violation(module, imported)
            if why is None:
                continue
            pair = (module, imported)
            if pair in KNOWN:
                known_seen.add(pair)
                continue
            problems.append(f"{path.relative_to(ROOT)}:{line}: imports devserver_lora.{imported}: {why}")
    return problems, known_seen


def test_no_module_imports_a_higher_layer() -> None:
    problems, known_seen = find_violations()
    assert not problems, "layering violations:\n" + "\n".join(problems)
    stale = set(KNOWN) - known_seen
    assert not stale, f"these KNOWN violations are gone; delete them from the list: {sorted(stale)}"


def test_every_module_is_in_a_layer() -> None:
    unplaced = [m for m in package_modules() if layer_key(m) is None]
    assert not unplaced, f"modules in no layer: {unplaced}"


def test_the_checker_catches_eager_and_lazy_upward_imports() -> None:
    # A checker that flags nothing would pass the test above; prove it flags each kind of violation.
    lazy = "def f():\n    from .config.models import OutputConfig\n    return OutputConfig\n"
    assert imports_of(lazy, "errors", is_package=False) == [("config.models", 2)]
    assert violation("errors", "config.models") is not None
    assert violation("lora.spec", "config.models") is not None  # a LoRA spec knows nothing of configs
    assert violation("config.models", "train.plan") is not None  # the core importing training
    assert violation("train.dataset.checks", "train.plan") is not None  # dataset above the plan
    assert violation("train.plan", "devserver") is not None  # training into DevServer wiring
    assert violation("train.install", "comfy.client") is not None  # only the demo talks to ComfyUI
    assert violation("config.tree", "testing.tiny_sd3") is not None
    assert violation("newthing", "errors") is not None  # unplaced modules are reported
    relative = "from ...paths import safe_join\nfrom ... import safe_json\n"
    assert imports_of(relative, "train.dataset.zipsafe", is_package=False) == [("paths", 1), ("safe_json", 2)]
    # ... and lets the allowed directions through.
    assert violation("graph.inject", "lora.spec") is None
    assert violation("train.install", "config.validate") is None
    assert violation("train.demo", "comfy") is None
    assert violation("train.native.tiny", "testing.tiny_sd3") is None


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (eagerly or lazily), each name cut to its module."""
    modules = package_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (path, is_package) in modules.items():
        for imported, _ in imports_of(path.read_text(encoding="utf-8"), module, is_package=is_package):
            parts = imported.split(".") if imported else []
            while parts and ".".join(parts) not in modules:
                parts.pop()  # `from .pkg import name` names an attribute, not a module
            target = ".".join(parts)
            if target in modules and target != module:
                graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
