"""Facts of the pinned sd-scripts source that the Kohya backend and its stand-in rely on, read from the source.

`source_facts(root)` derives them from a plain sd-scripts tree (../shared/third_party/sd-scripts, the commit of
trainer/sd-scripts.commit); tests/fixtures/kohya/sd_scripts_facts.json holds a copy so that the tests using them
run from a clone alone. tests/test_kohya_sd_scripts_facts.py checks that the copy equals what the source says.
Regenerate the copy after moving the pin: `.venv/bin/python tests/sd_scripts_facts.py`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import warnings
from pathlib import Path

from conftest import KOHYA_FIXTURES, SHARED

SD_SCRIPTS = Path(os.environ.get("SD_SCRIPTS_SOURCE", SHARED / "third_party" / "sd-scripts"))
FACTS_FILE = KOHYA_FIXTURES / "sd_scripts_facts.json"
STANDIN = Path(__file__).resolve().parent / "kohya_standin" / "sd-scripts" / "_standin.py"

# (fact name, file, class or None, function, a text the function contains): each message we name or imitate.
MESSAGES: tuple[tuple[str, str, str | None, str, str], ...] = (
    ("te_cache_assertion", "sd3_train_network.py", "Sd3NetworkTrainer", "assert_extra_args",
     "when caching Text Encoder output, either caption_dropout_rate"),
    ("bucket_no_upscale_ignores_reso", "library/train_util.py", "BaseDataset", "make_buckets",
     "min_bucket_reso and max_bucket_reso are ignored if bucket_no_upscale is set"),
    ("block_swap_bound", "library/sd3_models.py", "MMDiT", "enable_block_swap", "Cannot swap more than"),
)


def _parse(path: Path) -> ast.Module:
    with warnings.catch_warnings():  # sd-scripts has regexes in plain strings ("\\(" escapes): not ours to warn on
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(path.read_text(encoding="utf-8"))


def _strings(node: ast.AST) -> list[str]:
    """The literal text of every string in `node` (f-strings as their literal parts joined by `{}`)."""
    found = []
    for n in ast.walk(node):
        if isinstance(n, ast.JoinedStr):
            found.append("".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in n.values))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            found.append(n.value)
    return found


def _function(tree: ast.Module, cls: str | None, name: str) -> ast.FunctionDef:
    scope: list[ast.stmt] = tree.body
    if cls is not None:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    return next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name)


def _message(root: Path, file: str, cls: str | None, func: str, needle: str) -> dict[str, str]:
    tree = _parse(root / file)
    fn = _function(tree, cls, func)
    text = next(s for s in _strings(fn) if needle in s)
    return {"file": file, "function": f"{cls}.{func}" if cls else func, "text": text}


def _args_reads(tree: ast.Module, *, cls: str | None = None, skip: frozenset[str] = frozenset()) -> tuple[set, set]:
    """Names X the code reads as `args.X` / getattr(args, "X"), and prefixes it reads through `dir(args)`."""
    names: set[str] = set()
    prefixes: set[str] = set()

    def visit(node: ast.AST) -> None:
        for n in ast.walk(node):
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "args" \
                    and isinstance(n.ctx, ast.Load):
                names.add(n.attr)
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr") \
                    and len(n.args) >= 2 and isinstance(n.args[0], ast.Name) and n.args[0].id == "args" \
                    and isinstance(n.args[1], ast.Constant):
                names.add(str(n.args[1].value))
            elif isinstance(n, ast.For) and isinstance(n.iter, ast.Call) and isinstance(n.iter.func, ast.Name) \
                    and n.iter.func.id == "dir":
                for c in ast.walk(n):
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "startswith" \
                            and c.args and isinstance(c.args[0], ast.Constant):
                        prefixes.add(str(c.args[0].value))

    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if not (isinstance(item, ast.FunctionDef) and item.name in skip):
                    visit(item)
        else:
            visit(node)
    return names, prefixes


def _library_imports(tree: ast.Module) -> set[str]:
    mods = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "library":
            mods |= {a.name for a in n.names} if n.module == "library" else {n.module.split(".")[1]}
        elif isinstance(n, ast.Import):
            mods |= {a.name.split(".")[1] for a in n.names if a.name.startswith("library.")}
    return mods


def args_read(root: Path, script: str) -> dict[str, list[str]]:
    """What the family's script can read of its argparse namespace: `args.X` in the script, in the methods of
    train_network.NetworkTrainer it does not override, and in every library module they import (transitively);
    prefixes read through `dir(args)` (train_util.get_sai_model_spec reads every `metadata_*`)."""
    own = _parse(root / script)
    overridden = {i.name for c in own.body if isinstance(c, ast.ClassDef) for i in c.body
                  if isinstance(i, ast.FunctionDef)}
    base = _parse(root / "train_network.py")
    names, prefixes = _args_reads(own)
    more, pre = _args_reads(base, cls="NetworkTrainer", skip=frozenset(overridden) if script != "train_network.py"
                            else frozenset())
    names |= more
    prefixes |= pre
    todo, seen = _library_imports(own) | _library_imports(base), set()
    while todo:
        mod = todo.pop()
        seen.add(mod)
        path = root / "library" / f"{mod}.py"
        if not path.is_file():
            continue
        tree = _parse(path)
        more, pre = _args_reads(tree)
        names |= more
        prefixes |= pre
        todo |= _library_imports(tree) - seen
    return {"names": sorted(names), "prefixes": sorted(prefixes)}


# What the stand-in prints that does not come from sd-scripts' own source, by where it does come from.
NOT_SD_SCRIPTS: dict[str, str] = {
    "Traceback (most recent call last):": "Python's traceback header",
    "AssertionError:": "Python's line for an uncaught AssertionError (sd-scripts' message follows it)",
    'File "': "Python's traceback frame line",
    "torch.OutOfMemoryError: CUDA out of memory.": "torch's CUDA caching allocator",
    "RuntimeError: CUDA error: no kernel image is available": "the CUDA runtime, raised through torch",
    "RuntimeError: Error(s) in loading state_dict for": "torch.nn.Module.load_state_dict",
    "size mismatch for ": "torch.nn.Module.load_state_dict",
    "RuntimeError: shape '": "torch's Tensor.view / reshape",
    "ModuleNotFoundError: No module named": "Python's import system",
    "FileNotFoundError: [Errno 2] No such file or directory:": "Python's open()",
    "voluptuous.error.": "voluptuous, the exception's class path in the traceback",
    "/train_state.json: {'current_epoch':": "the dict train_network.py saves in train_state.json, printed with "
                                           "`load train state from {file}: {data}`",
    ", 'current_step':": "the same train_state.json dict",
}
# Python prints an uncaught AssertionError as "AssertionError: <message>"; rich's log handler puts the level first
# and the logging file:line last (_RICH_PATH).
_WRAPPERS = ("AssertionError: ", "ERROR    ", "WARNING  ", "INFO     ")
_RICH_PATH = re.compile(r"\s+[\w.]+\.py:\d+$")


def source_files(root: Path) -> dict[str, str]:
    """Every .py file of the tree by its path inside the tree."""
    return {str(p.relative_to(root)): p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.rglob("*.py"))}


def standin_fragments() -> list[str]:
    """Each line of literal text the stand-in prints (`out(...)`), at least 8 characters, in order."""
    tree = ast.parse(STANDIN.read_text(encoding="utf-8"))
    consts = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Name)}

    def parts(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            return [str(v.value) for v in node.values if isinstance(v, ast.Constant)]
        if isinstance(node, ast.BinOp):
            return parts(node.left) + parts(node.right)
        if isinstance(node, ast.Name) and node.id in consts:
            return parts(consts[node.id])
        return []

    found: list[str] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "out" and n.args:
            for text in parts(n.args[0]):
                found += [line.strip() for line in text.split("\n") if len(line.strip()) >= 8]
    return list(dict.fromkeys(found))


def standin_origins(root: Path) -> dict[str, str]:
    """Where each printed fragment of the stand-in comes from: "sd-scripts:<file>", a NOT_SD_SCRIPTS origin, or
    "UNACCOUNTED" (an invented string: the test fails on it)."""
    files = source_files(root)
    origins = {}
    for fragment in standin_fragments():
        text = _RICH_PATH.sub("", fragment)
        for wrapper in _WRAPPERS:
            text = text.removeprefix(wrapper)
        text = text.strip()
        if not text:  # a rich record whose message wraps onto the next line: level and file:line only
            origins[fragment] = "rich's log handler: level and the logging file:line of a wrapped record"
            continue
        where = next((f for f, body in files.items() if text in body), None)
        # A wrapper's text ("AssertionError: <message>") must be sd-scripts' own; only a bare wrapper is Python's.
        wrapped = text != fragment and bool(text.strip(": "))
        other = None if wrapped else next((o for p, o in NOT_SD_SCRIPTS.items() if fragment.startswith(p)), None)
        origins[fragment] = f"sd-scripts:{where}" if where else other or "UNACCOUNTED"
    return origins


def source_facts(root: Path) -> dict:
    messages = {name: _message(root, file, cls, func, needle) for name, file, cls, func, needle in MESSAGES}
    scripts = ("sd3_train_network.py", "flux_train_network.py", "sdxl_train_network.py", "train_network.py")
    return {
        "origin": "derived from sd-scripts' source at the pin by tests/sd_scripts_facts.py (source_facts); "
                  "tests/test_kohya_sd_scripts_facts.py checks it against ../shared/third_party/sd-scripts",
        "messages": messages,
        "args_read": {script: args_read(root, script) for script in scripts},
        "standin_strings": standin_origins(root),
    }


def load_facts() -> dict:
    return json.loads(FACTS_FILE.read_text(encoding="utf-8"))


if __name__ == "__main__":
    FACTS_FILE.write_text(json.dumps(source_facts(SD_SCRIPTS), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {FACTS_FILE}")
