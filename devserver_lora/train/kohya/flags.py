"""What sd-scripts accepts, as recorded data: the flag list of `sd3_train_network.py` and the dataset-TOML schema.

Both files under `data/` say where they come from. They let us refuse, before a long
model load, anything the pinned sd-scripts would reject (argparse exit 2) or, worse,
accept and silently ignore.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ...errors import Problem

# Flags sd3_train_network.py parses (they are shared argparse groups) but ignores for SD3:
# passing them would only mislead whoever reads the config.
SD3_IGNORED_FLAGS = frozenset({"clip_skip", "xformers", "v2", "v_parameterization", "max_token_length", "mem_eff_attn"})


@dataclass(frozen=True)
class Flag:
    name: str
    action: str  # _StoreAction | _StoreTrueAction | _HelpAction
    type: str | None
    nargs: int | str | None
    default: Any
    choices: Any


def _data(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8"))


@cache
def sd3_flags() -> dict[str, Flag]:
    """Every long flag `sd3_train_network.py` at the pin accepts, by name without dashes."""
    raw = _data("sd3_train_network_flags.json")["flags"]
    return {
        name: Flag(name, v["action"], v["type"], v["nargs"], v["default"], v["choices"]) for name, v in raw.items()
    }


@cache
def dataset_schema() -> dict:
    return _data("dataset_schema.json")


def subset_keys() -> dict[str, str]:
    s = dataset_schema()
    return {
        **s["subset_ascendable"],
        **s["dropout_subset_ascendable"],
        **s["dreambooth_subset_ascendable"],
        **s["dreambooth_subset_distinct"],
    }


def dataset_keys() -> dict[str, str]:
    s = dataset_schema()
    return {
        **s["dataset_ascendable"],
        **s["subset_ascendable"],
        **s["dreambooth_subset_ascendable"],
        **s["dropout_subset_ascendable"],
    }


def general_keys() -> dict[str, str]:
    return dataset_keys()


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, float)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "resolution":
        if isinstance(value, int) and not isinstance(value, bool):
            return True
        return isinstance(value, list) and len(value) == 2 and all(_type_ok("int", v) for v in value)
    if kind == "float_pair":
        return isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value)
    return False


def _table_problems(
    table: Any, allowed: dict[str, str], where: str, file: str | None, *, skip: tuple[str, ...] = ()
) -> list[Problem]:
    if not isinstance(table, dict):
        return [Problem(f"expected a table, got {type(table).__name__}", file=file, path=where, code="type")]
    problems = []
    for key, value in table.items():
        if key in skip:
            continue
        kind = allowed.get(key)
        if kind is None:
            problems.append(
                Problem(
                    f"key {key!r} is not accepted by sd-scripts here (it fails with 'extra keys not allowed')",
                    file=file,
                    path=f"{where}.{key}",
                    code="extra_key",
                    hint=f"allowed here: {', '.join(sorted(allowed))}",
                )
            )
        elif not _type_ok(kind, value):
            problems.append(
                Problem(
                    f"{key} = {value!r} has the wrong type (sd-scripts expects {kind})",
                    file=file,
                    path=f"{where}.{key}",
                    code="type",
                )
            )
    return problems


def dataset_config_problems(doc: dict, *, file: str | None = None) -> list[Problem]:
    """Validate a parsed dataset TOML the way sd-scripts' DreamBooth sanitizer does; returns every problem."""
    problems: list[Problem] = []
    for key in doc:
        if key not in ("general", "datasets"):
            problems.append(
                Problem(f"top-level key {key!r} is not allowed", file=file, path=key, code="extra_key",
                        hint="only [general] and [[datasets]] exist")
            )
    if "general" in doc:
        problems += _table_problems(doc["general"], general_keys(), "general", file)
    datasets = doc.get("datasets", [])
    if not isinstance(datasets, list):
        return problems + [Problem("datasets must be an array of tables", file=file, path="datasets", code="type")]
    required = dataset_schema()["dreambooth_subset_required"]
    for i, ds in enumerate(datasets):
        where = f"datasets[{i}]"
        problems += _table_problems(ds, dataset_keys(), where, file, skip=("subsets",))
        subsets = ds.get("subsets", []) if isinstance(ds, dict) else []
        if not isinstance(subsets, list):
            problems.append(Problem("subsets must be an array of tables", file=file, path=f"{where}.subsets"))
            continue
        for j, sub in enumerate(subsets):
            swhere = f"{where}.subsets[{j}]"
            problems += _table_problems(sub, subset_keys(), swhere, file)
            if isinstance(sub, dict):
                if "metadata_file" in sub:
                    continue  # reported above as an extra key: we only generate DreamBooth subsets
                for key in required:
                    if key not in sub:
                        problems.append(Problem(f"required key {key!r} is missing", file=file,
                                                path=f"{swhere}.{key}", code="missing"))
    return problems
