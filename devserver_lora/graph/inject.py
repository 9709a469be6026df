"""LoRA injection into ComfyUI API-format graphs, for every model family.

The rules (DESIGN.md section 2) follow the graph's real edges, not class names:
- a model source is a node that outputs MODEL without taking one in (CheckpointLoaderSimple,
  UNETLoader, ...); a LoRA goes after it and after any LoRA chain already attached to it;
- the CLIP a LoRA patches is the one whose text encoders feed the same sampler/guider as the
  model (so a dangling TripleCLIPLoader is ignored, and an SDXL refiner keeps its own CLIP);
- every consumer of the replaced MODEL and CLIP outputs is rewired to the end of the chain.

The input graph is never mutated: one copy is taken, then edited in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import WorkflowError
from ..lora.spec import LoraSpec
from .api import EdgeIndex, NodeTypes, copy_api_graph, default_node_types

__all__ = [
    "ModelSource",
    "clip_text_encoders",
    "find_model_sources",
    "set_field",
    "inject_loras",
    "lora_title",
]

MODEL = "MODEL"
CLIP = "CLIP"
# Types a text encoder's result travels through on its way to a sampler or guider.
_COND_TYPES = frozenset({CLIP, "CONDITIONING", "*"})


def lora_title(name: str) -> str:
    """The `_meta.title` of an injected node."""
    return f"LoRA: {name}"


@dataclass(frozen=True)
class ModelSource:
    """A MODEL output that nothing upstream produces, with the LoRA chain already hanging off it."""

    node_id: str
    output: int
    class_type: str
    chain: tuple[str, ...]  # ids of LoRA loader nodes already chained after it, in order

    @property
    def end(self) -> tuple[str, int]:
        """The output a new LoRA must be attached to."""
        return (self.chain[-1], 0) if self.chain else (self.node_id, self.output)


def _is_lora_loader(index: EdgeIndex, node_id: str) -> bool:
    return "lora" in index.class_of(node_id).casefold()


def _chain_after(index: EdgeIndex, start: tuple[str, int], type_name: str, input_name: str) -> list[tuple[str, int]]:
    """Outputs along the LoRA chain that starts at `start` (inclusive), following one type."""
    path = [start]
    seen = {start[0]}
    while True:
        users = index.consumers.get(path[-1], ())
        # A chain continues only through a LoRA loader that is the output's sole reader. If other
        # nodes read the output directly (DevServer's own injector leaves the text encoders on the
        # CLIP loader), the loader is a side branch: attaching after it would bypass those readers.
        if len(users) != 1:
            return path
        nxt, name = users[0]
        if name != input_name or not _is_lora_loader(index, nxt) or nxt in seen:
            return path
        outs = index.outputs_of_type(nxt, type_name)
        if not outs:
            return path
        seen.add(nxt)
        path.append((nxt, outs[0]))


def _roots(index: EdgeIndex) -> dict[str, list[tuple[str, int]]]:
    """MODEL and CLIP outputs of nodes that take no input of that type (loaders), in id order.

    Injection never changes these sets (it only adds LoRA loaders, which are never roots), so
    they are computed once per call, in one pass over the graph.
    """
    roots: dict[str, list[tuple[str, int]]] = {MODEL: [], CLIP: []}
    for node_id in sorted(index.graph, key=_id_sort_key):
        for type_name, found in roots.items():
            outs = index.outputs_of_type(node_id, type_name)
            if outs and not _is_lora_loader(index, node_id) and not index.consumes_type(node_id, type_name):
                found += [(node_id, out) for out in outs]
    return roots


def _model_sources(index: EdgeIndex, roots: list[tuple[str, int]] | None = None) -> list[ModelSource]:
    sources = []
    for node_id, out in _roots(index)[MODEL] if roots is None else roots:
        if not index.consumers.get((node_id, out)):
            continue  # a loader whose MODEL nobody reads is not a source of anything
        chain = _chain_after(index, (node_id, out), MODEL, "model")
        sources.append(ModelSource(node_id, out, index.class_of(node_id), tuple(n for n, _ in chain[1:])))
    return sources


def find_model_sources(workflow: Mapping[str, Any], *, types: NodeTypes | None = None) -> list[ModelSource]:
    """The model sources of a graph (read-only), in a stable order."""
    graph = workflow if isinstance(workflow, dict) else dict(workflow)
    return _model_sources(EdgeIndex(graph, types or default_node_types()))


def _is_number(node_id: str) -> bool:
    # ASCII only: "²".isdigit() is true but int("²") fails, and ids are hostile input.
    return node_id.isascii() and node_id.isdigit()


def _id_sort_key(node_id: str) -> tuple[int, int, str]:
    return (0, int(node_id), "") if _is_number(node_id) else (1, 0, node_id)


def _reach(index: EdgeIndex, start: tuple[str, int], follow: frozenset[str] | None) -> set[str]:
    """Nodes reachable from an output, crossing only outputs whose type is in `follow` (None: MODEL)."""
    seen: set[str] = set()
    stack = [c for c, _ in index.consumers.get(start, ())]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for idx in index.output_indices(node):
            t = index.output_type(node, idx)
            if (t == MODEL) if follow is None else (t in follow):
                stack.extend(c for c, _ in index.consumers.get((node, idx), ()))
    return seen


def _clip_ends(index: EdgeIndex, roots: list[tuple[str, int]]) -> list[tuple[str, int, tuple[str, ...]]]:
    """`(root, output, chain)` for every CLIP output that something reads."""
    ends = []
    for node_id, out in roots:
        if index.consumers.get((node_id, out)):
            chain = _chain_after(index, (node_id, out), CLIP, "clip")
            ends.append((node_id, out, tuple(n for n, _ in chain[1:])))
    return ends


def _clip_for(index: EdgeIndex, source: ModelSource, clip_roots: list[tuple[str, int]]) -> tuple[str, int] | None:
    """The CLIP output (chain end) whose conditioning meets this model at a sampler or guider."""
    model_users = _reach(index, source.end, None)
    matches = []
    for root, out, chain in _clip_ends(index, clip_roots):
        end = (chain[-1], _clip_out(index, chain[-1])) if chain else (root, out)
        if _reach(index, end, _COND_TYPES) & model_users:
            matches.append(end)
    if len(matches) > 1:
        # Prefer the CLIP that comes out of the same checkpoint as the model.
        own = [m for m in matches if m[0] == source.node_id or m[0] in source.chain]
        if len(own) == 1:
            return own[0]
        names = ", ".join(f"'{n}' ({index.class_of(n)})" for n, _ in matches)
        raise WorkflowError(
            f"model source '{source.node_id}' ({source.class_type}) is conditioned by several CLIP outputs: {names}",
            hint="give the graph a single text-encoder loader per model, or inject the LoRA by hand",
        )
    return matches[0] if matches else None


def _clip_out(index: EdgeIndex, node_id: str) -> int:
    outs = index.outputs_of_type(node_id, CLIP)
    return outs[0] if outs else 1


def _has_text_encoder(spec: LoraSpec, lora_info: Mapping[str, Any] | None) -> bool:
    """Whether the LoRA patches text encoders; unknown means yes (LoraLoader is harmless then)."""
    if not lora_info or spec.name not in lora_info:
        return True
    info = lora_info[spec.name]
    if isinstance(info, bool):
        return info
    if isinstance(info, Mapping):
        return bool(info.get("has_text_encoder", True))
    return bool(getattr(info, "has_text_encoder", True))  # a LoraReport, or any object that says it


def _pick_source(sources: list[ModelSource], spec: LoraSpec, index: EdgeIndex) -> ModelSource:
    listing = ", ".join(f"'{s.node_id}' ({s.class_type})" for s in sources)
    if spec.target is not None:
        for s in sources:
            if spec.target == s.node_id or spec.target in s.chain:
                return s
        raise WorkflowError(
            f"LoRA '{spec.name}' targets node '{spec.target}', which is not a model source of this graph",
            hint=f"set target to one of: {listing}",
        )
    if len(sources) == 1:
        return sources[0]
    raise WorkflowError(
        f"LoRA '{spec.name}' is ambiguous: the graph has {len(sources)} model sources ({listing})",
        hint="name the one to patch with the LoRA's 'target' (its node id)",
    )


class _Ids:
    """New node ids: numeric strings after the largest numeric id, skipping every id in use."""

    def __init__(self, graph: Mapping[str, Any]) -> None:
        self._graph = graph
        numeric = [int(k) for k in graph if _is_number(k)]
        self._next = max(numeric, default=0) + 1

    def take(self) -> str:
        while str(self._next) in self._graph:
            self._next += 1
        new = str(self._next)
        self._next += 1
        return new


def _existing(index: EdgeIndex, ids: Sequence[str], name: str) -> str | None:
    for node_id in ids:
        if index.graph[node_id].get("inputs", {}).get("lora_name") == name:
            return node_id
    return None


def _check_same_strengths(index: EdgeIndex, node_id: str, spec: LoraSpec) -> None:
    """A file already in the chain counts as applied only if at the strengths asked for."""
    inputs = index.graph[node_id].get("inputs", {})
    have = (inputs.get("strength_model"), inputs.get("strength_clip", spec.clip_strength))
    want = (spec.strength_model, spec.clip_strength)
    if have != want and not (
        isinstance(have[0], (int, float)) and isinstance(have[1], (int, float))
        and abs(have[0] - want[0]) < 1e-9 and abs(have[1] - want[1]) < 1e-9
    ):
        raise WorkflowError(
            f"LoRA '{spec.name}' is already applied by node '{node_id}' ({index.class_of(node_id)}) at strength "
            f"{have[0]}/{have[1]}, but {want[0]:g}/{want[1]:g} is asked for",
            hint="remove the LoRA from the chunk's workflow, or give the config the same strengths",
        )


class _State:
    """Model sources and their CLIP ends, analysed once per call and kept current after each LoRA.

    Injection only moves chain ends (a new loader becomes the end of its model chain and, with a
    CLIP, of every CLIP chain that ended where it attached), so re-analysing the graph per LoRA
    would give the same answer at many times the cost.
    """

    def __init__(self, index: EdgeIndex) -> None:
        self.index = index
        roots = _roots(index)
        self.clip_roots = roots[CLIP]
        self.sources = _model_sources(index, roots[MODEL])
        self._clip: dict[str, tuple[str, int] | None] = {}

    def clip_for(self, source: ModelSource) -> tuple[str, int] | None:
        if source.node_id not in self._clip:
            self._clip[source.node_id] = _clip_for(self.index, source, self.clip_roots)
        return self._clip[source.node_id]

    def attached(self, source: ModelSource, new_id: str, clip_end: tuple[str, int] | None) -> None:
        i = self.sources.index(source)
        self.sources[i] = ModelSource(source.node_id, source.output, source.class_type, source.chain + (new_id,))
        if clip_end is not None:
            for key, end in self._clip.items():
                if end == clip_end:
                    self._clip[key] = (new_id, 1)


def _inject_one(
    state: _State,
    ids: _Ids,
    spec: LoraSpec,
    lora_info: Mapping[str, Any] | None,
) -> None:
    index = state.index
    if not state.sources:
        raise WorkflowError(
            "the graph has no model source: no node outputs a MODEL that something reads",
            hint="use an output chunk whose workflow loads a checkpoint or diffusion model (CheckpointLoaderSimple, UNETLoader)",
        )
    source = _pick_source(state.sources, spec, index)
    present = _existing(index, source.chain, spec.name)
    if present is not None:
        _check_same_strengths(index, present, spec)
        return  # already applied (by an earlier call or by the chunk itself): never twice
    clip_end = state.clip_for(source) if _has_text_encoder(spec, lora_info) else None
    if clip_end is not None and _existing(index, [n for n, _ in _chain_of(index, clip_end)], spec.name):
        # The same file already patches this (shared) CLIP for another model source (Wan high/low
        # noise): patch only the model, or the text encoders would get it twice.
        clip_end = None

    model_end = source.end
    new_id = ids.take()
    inputs: dict[str, Any] = {"model": [model_end[0], model_end[1]]}
    if clip_end is not None:
        node = {
            "class_type": "LoraLoader",
            "inputs": inputs
            | {
                "clip": [clip_end[0], clip_end[1]],
                "lora_name": spec.name,
                "strength_model": spec.strength_model,
                "strength_clip": spec.clip_strength,
            },
        }
    else:
        node = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": inputs | {"lora_name": spec.name, "strength_model": spec.strength_model},
        }
    node["_meta"] = {"title": lora_title(spec.name)}
    # Collect consumers before adding the node, so the new node itself is not rewired; and never
    # rewire a node the new one depends on (a half-wired LoRA loader reading the CLIP while its
    # MODEL feeds ours), which would close a cycle.
    upstream = _ancestors(index, [model_end[0]] + ([clip_end[0]] if clip_end is not None else []))
    model_users = [u for u in index.consumers.get(model_end, ()) if u[0] not in upstream]
    clip_users = [u for u in index.consumers.get(clip_end, ()) if u[0] not in upstream] if clip_end is not None else []
    index.add_node(new_id, node)
    for consumer, name in model_users:
        index.relink(consumer, name, new_id, 0)
    for consumer, name in clip_users:
        index.relink(consumer, name, new_id, 1)
    state.attached(source, new_id, clip_end)


def _ancestors(index: EdgeIndex, starts: list[str]) -> set[str]:
    """The given nodes and every node they read from, transitively."""
    seen: set[str] = set()
    stack = list(starts)
    graph = index.graph
    while stack:
        node = stack.pop()
        if node in seen or node not in graph:
            continue
        seen.add(node)
        for value in graph[node].get("inputs", {}).values():
            if type(value) is list and len(value) == 2:
                stack.append(str(value[0]))
    return seen


def _chain_of(index: EdgeIndex, end: tuple[str, int]) -> list[tuple[str, int]]:
    """The LoRA loaders upstream of a CLIP chain end (walking back through their `clip` inputs)."""
    out = []
    node = end[0]
    while _is_lora_loader(index, node):
        out.append((node, 1))
        link = index.graph[node].get("inputs", {}).get("clip")
        if not isinstance(link, list):
            break
        node = str(link[0])
    return out


def inject_loras(
    workflow: Mapping[str, Any],
    loras: Sequence[LoraSpec],
    *,
    lora_info: Mapping[str, Any] | None = None,
    types: NodeTypes | None = None,
) -> dict[str, Any]:
    """Return a copy of `workflow` with one LoRA loader per spec chained after its model source.

    - The model source is the node outputting MODEL that nothing upstream produces; with several
      (SDXL refiner, Wan high/low noise) the spec's `target` (a node id) decides.
    - The CLIP patched is the one whose text encoders condition the same sampler/guider as the model;
      every consumer of the old MODEL and CLIP outputs then reads the LoRA's outputs.
    - `lora_info` maps a LoRA name to a `LoraReport`, a mapping with `has_text_encoder`, or a bool;
      a LoRA without text-encoder keys, or a graph without a CLIP path, gets LoraLoaderModelOnly.
    - A spec whose file is already in the chain adds nothing, so calling this twice is harmless.
    - `types` overrides the node type table (e.g. built from a live server's object_info).

    Raises `WorkflowError` (what and where, with a hint) when the graph cannot take the LoRA.
    """
    if not isinstance(workflow, Mapping):
        raise WorkflowError(f"a workflow must be a JSON object of nodes, not {type(workflow).__name__}")
    if not all(type(k) is str for k in workflow):
        # JSON object keys are strings; a Python caller's int ids are normalised the same way.
        workflow = {str(k): v for k, v in workflow.items()}
    graph: dict[str, Any] = copy_api_graph(workflow)
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(
                f"node '{node_id}' is not a ComfyUI API node (expected {{'class_type': ..., 'inputs': {{...}}}})",
                hint="export the workflow with 'Save (API Format)' in ComfyUI",
            )
        node.setdefault("inputs", {})
    index = EdgeIndex(graph, types or default_node_types())
    ids = _Ids(graph)
    state = _State(index)
    for spec in loras:
        if not isinstance(spec, LoraSpec):
            spec = LoraSpec.model_validate(spec)
        _inject_one(state, ids, spec, lora_info)
    return graph


def set_field(workflow: dict[str, Any], node_id: str, field: str, value: Any) -> None:
    """Set a chunk input mapping's target (`field` is dotted, e.g. "inputs.value") in place.

    Raises `WorkflowError` when the node or the path does not exist, rather than inventing it.
    """
    node = workflow.get(node_id)
    if not isinstance(node, dict):
        raise WorkflowError(
            f"input mapping targets node '{node_id}', which is not in the workflow",
            hint="fix the chunk's input_mappings node_id",
        )
    parts = field.split(".")
    holder: Any = node
    for part in parts[:-1]:
        holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            raise WorkflowError(
                f"input mapping field '{field}' does not exist in node '{node_id}' ({node.get('class_type')})",
                hint="fix the chunk's input_mappings field (usually 'inputs.<name>')",
            )
    holder[parts[-1]] = value


_ENCODER_NAMES = (("clip_l", ("clip_l", "clip-l", "clipl", "clip_vit_l")), ("clip_g", ("clip_g", "clip-g", "clipg", "bigg")),
                  ("t5xxl", ("t5",)))


def _encoder_of(file_name: str) -> str | None:
    low = file_name.casefold().rsplit("/", 1)[-1]
    if "umt5" in low:
        return None  # Wan's UMT5 is not the T5-XXL of SD3/FLUX: ComfyUI maps it differently
    found = [enc for enc, marks in _ENCODER_NAMES if any(m in low for m in marks)]
    return found[0] if len(found) == 1 else None


def clip_text_encoders(workflow: Mapping[str, Any], node_id: str) -> tuple[str, ...] | None:
    """The text encoders in the CLIP that node `node_id` (e.g. an injected LoraLoader) patches.

    ComfyUI maps text-encoder LoRA keys by the encoders the CLIP object holds (DESIGN.md section 3:
    with no CLIP-L, CLIP-G keys are named lora_te_, not lora_te2_), so a coverage check must know
    them. Walks back through CLIP pass-through nodes to the loader; Dual/Triple/CLIPLoader files are
    recognised by name (clip_l / clip_g / t5...). None when unsure (a checkpoint's own CLIP, or a
    file name that says nothing): then check against the full architecture.
    """
    seen: set[str] = set()
    link = (workflow.get(node_id) or {}).get("inputs", {}).get("clip")
    while isinstance(link, list) and len(link) == 2:
        src = str(link[0])
        node = workflow.get(src)
        if not isinstance(node, Mapping) or src in seen:
            return None
        seen.add(src)
        inputs = node.get("inputs") or {}
        names = [v for k, v in sorted(inputs.items()) if k.startswith("clip_name") and isinstance(v, str)]
        if names and node.get("class_type") in ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader"):
            encoders = [_encoder_of(n) for n in names]
            if None in encoders:
                return None
            return tuple(e for e, _ in _ENCODER_NAMES if e in encoders)
        link = inputs.get("clip")  # CLIPSetLastLayer, LoRA loaders, ...: follow their CLIP input
    return None
