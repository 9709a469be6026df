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

from .errors import WorkflowError
from .graph import EdgeIndex, NodeTypes, copy_graph, default_node_types
from .lora_spec import LoraSpec

__all__ = [
    "ModelSource",
    "find_model_sources",
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
        loaders = [
            c
            for c, name in index.consumers.get(path[-1], ())
            if name == input_name and _is_lora_loader(index, c) and c not in seen
        ]
        if len(loaders) != 1:
            # Zero: the chain ends here. Several: branches we must not guess between.
            return path
        nxt = loaders[0]
        outs = index.outputs_of_type(nxt, type_name)
        if not outs:
            return path
        seen.add(nxt)
        path.append((nxt, outs[0]))


def _roots(index: EdgeIndex, type_name: str) -> list[tuple[str, int]]:
    """Outputs of `type_name` on nodes that take no input of that type (loaders), in id order.

    Injection never changes this set (it only adds LoRA loaders, which are never roots), so it
    is computed once per call.
    """
    roots = []
    for node_id in sorted(index.graph, key=_id_sort_key):
        outs = index.outputs_of_type(node_id, type_name)
        if not outs or _is_lora_loader(index, node_id) or index.consumes_type(node_id, type_name):
            continue
        roots += [(node_id, out) for out in outs]
    return roots


def _model_sources(index: EdgeIndex, roots: list[tuple[str, int]] | None = None) -> list[ModelSource]:
    sources = []
    for node_id, out in _roots(index, MODEL) if roots is None else roots:
        if not index.consumers.get((node_id, out)):
            continue  # a loader whose MODEL nobody reads is not a source of anything
        chain = _chain_after(index, (node_id, out), MODEL, "model")
        sources.append(ModelSource(node_id, out, index.class_of(node_id), tuple(n for n, _ in chain[1:])))
    return sources


def find_model_sources(workflow: Mapping[str, Any], *, types: NodeTypes | None = None) -> list[ModelSource]:
    """The model sources of a graph (read-only), in a stable order."""
    graph = workflow if isinstance(workflow, dict) else dict(workflow)
    return _model_sources(EdgeIndex(graph, types or default_node_types()))


def _id_sort_key(node_id: str) -> tuple[int, int, str]:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


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
    return bool(getattr(info, "has_text_encoder", True))


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
        numeric = [int(k) for k in graph if k.isdigit()]
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


class _State:
    """Model sources and their CLIP ends, analysed once per call and kept current after each LoRA.

    Injection only moves chain ends (a new loader becomes the end of its model chain and, with a
    CLIP, of every CLIP chain that ended where it attached), so re-analysing the graph per LoRA
    would give the same answer at many times the cost.
    """

    def __init__(self, index: EdgeIndex) -> None:
        self.index = index
        self.clip_roots = _roots(index, CLIP)
        self.sources = _model_sources(index, _roots(index, MODEL))
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
    if _existing(index, source.chain, spec.name) is not None:
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
    # Collect consumers before adding the node, so the new node itself is not rewired.
    model_users = list(index.consumers.get(model_end, ()))
    clip_users = list(index.consumers.get(clip_end, ())) if clip_end is not None else []
    index.add_node(new_id, node)
    for consumer, name in model_users:
        index.relink(consumer, name, new_id, 0)
    for consumer, name in clip_users:
        index.relink(consumer, name, new_id, 1)
    state.attached(source, new_id, clip_end)


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
    graph: dict[str, Any] = copy_graph(dict(workflow))
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
