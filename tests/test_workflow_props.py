"""Property tests: injection on random valid graphs keeps the graph sound.

Random graphs have 1-3 model sources (checkpoints, or UNETLoader + CLIP loader pairs), existing
LoRA chains, ModelSampling nodes, several samplers per source, CLIPSetLastLayer, dangling loaders
and ids that are numeric, words or subgraph-style ("115:110").
"""

from __future__ import annotations

import copy

from conftest import COMFY_FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devserver_lora.graph.api import default_node_types, iter_links
from devserver_lora.graph.check import graph_problems, load_object_info
from devserver_lora.graph.inject import find_model_sources, inject_loras
from devserver_lora.lora.spec import LoraSpec

TYPES = default_node_types()
OBJECT_INFO = load_object_info(COMFY_FIXTURES / "object_info.json")

_id_part = st.one_of(
    st.integers(min_value=1, max_value=400).map(str),
    st.sampled_from(["lora_high_noise", "unet_low", "ckpt", "enc", "node", "x"]),
    st.tuples(st.integers(1, 200), st.integers(1, 200)).map(lambda t: f"{t[0]}:{t[1]}"),
)


@st.composite
def graphs(draw: st.DrawFn) -> dict:
    g: dict = {}
    counter = [0]

    def nid() -> str:
        while True:
            base = draw(_id_part)
            counter[0] += 1
            cand = base if base not in g else f"{base}_{counter[0]}"
            if cand not in g:
                return cand

    def add(node: dict) -> str:
        i = nid()
        g[i] = node
        return i

    latent = add({"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}})
    n_sources = draw(st.integers(1, 3))
    for s in range(n_sources):
        if draw(st.booleans()):
            src = add({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"m{s}.safetensors"}})
            model, clip, vae = [src, 0], [src, 1], [src, 2]
            if draw(st.booleans()):  # the encoders may read a separate CLIP loader instead
                clip = [add({"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "a", "clip_name2": "b", "type": "sd3"}}), 0]
        else:
            src = add({"class_type": "UNETLoader", "inputs": {"unet_name": f"u{s}.safetensors", "weight_dtype": "default"}})
            model = [src, 0]
            clip = [add({"class_type": "CLIPLoader", "inputs": {"clip_name": "c", "type": "wan"}}), 0]
            vae = [add({"class_type": "VAELoader", "inputs": {"vae_name": "v"}}), 0]
        if draw(st.integers(0, 4)) == 0:
            # DevServer's own injector: a LoraLoader reading the CLIP, but only its MODEL is used.
            half = add({"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": f"up{s}.safetensors", "strength_model": 1.0, "strength_clip": 1.0}})
            model = [half, 0]
        for k in range(draw(st.integers(0, 2))):  # an existing LoRA chain
            if draw(st.booleans()):
                lid = add({"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": f"old{s}{k}.safetensors", "strength_model": 1.0, "strength_clip": 1.0}})
                model, clip = [lid, 0], [lid, 1]
            else:
                lid = add({"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": f"old{s}{k}.safetensors", "strength_model": 1.0}})
                model = [lid, 0]
        if draw(st.booleans()):
            clip = [add({"class_type": "CLIPSetLastLayer", "inputs": {"clip": clip, "stop_at_clip_layer": -1}}), 0]
        for _ in range(draw(st.integers(1, 2))):
            m = model
            if draw(st.booleans()):
                m = [add({"class_type": "ModelSamplingSD3", "inputs": {"model": model, "shift": 3.0}}), 0]
            pos = [add({"class_type": "CLIPTextEncode", "inputs": {"text": "p", "clip": clip}}), 0]
            neg = [add({"class_type": "CLIPTextEncode", "inputs": {"text": "n", "clip": clip}}), 0]
            ks = add({"class_type": "KSampler", "inputs": {"model": m, "positive": pos, "negative": neg, "latent_image": [latent, 0], "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}})
            dec = add({"class_type": "VAEDecode", "inputs": {"samples": [ks, 0], "vae": vae}})
            add({"class_type": "SaveImage", "inputs": {"images": [dec, 0], "filename_prefix": "x"}})
    if draw(st.booleans()):
        add({"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "a", "clip_name2": "b", "clip_name3": "c"}})
    return g


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict, list[LoraSpec], dict]:
    g = draw(graphs())
    sources = find_model_sources(g)
    specs = []
    for i in range(draw(st.integers(1, 3))):
        src = draw(st.sampled_from(sources))
        name = draw(st.sampled_from(["a", "b", "c", f"n{i}"])) + ".safetensors"
        # One strength per file: the same file at other strengths is an error (tested elsewhere).
        specs.append(LoraSpec(name=name, strength_model=0.5 + len(name) / 100, target=src.node_id))
    info = {s.name: draw(st.booleans()) for s in specs}
    return g, specs, info


def _ancestors(g: dict, start: str) -> set[str]:
    seen: set[str] = set()
    stack = [src for _, _, src, _ in iter_links({start: g[start]})]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(src for _, _, src, _ in iter_links({node: g[node]}))
    return seen


def _acyclic(g: dict) -> bool:
    deps = {k: {src for c, _, src, _ in iter_links({k: v})} for k, v in g.items()}
    state: dict[str, int] = {}
    for start in g:
        if start in state:
            continue
        stack = [(start, iter(deps[start]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return False
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(deps[nxt])))
    return True


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_injection_properties(case: tuple[dict, list[LoraSpec], dict]) -> None:
    g, specs, info = case
    original = copy.deepcopy(g)
    out = inject_loras(g, specs, lora_info=info)
    assert g == original, "input mutated"
    new = {k for k in out if k not in g}

    # ids unique and fresh; every link resolves to an existing output of the right arity
    assert len(new) + len(g) == len(out)
    assert all(isinstance(k, str) for k in out)
    for consumer, name, src, idx in iter_links(out):
        assert src in out, f"dangling link {consumer}.{name} -> {src}"
        outs = TYPES.outputs(out[src]["class_type"])
        assert outs is not None and idx < len(outs)
    assert _acyclic(out)

    # each new node is a LoRA loader titled after its file, one per distinct (target, file)
    for k in new:
        assert out[k]["class_type"] in ("LoraLoader", "LoraLoaderModelOnly")
        assert out[k]["_meta"]["title"] == "LoRA: " + out[k]["inputs"]["lora_name"]

    # every original link is either untouched or now passes through new LoRA loaders only,
    # arriving at exactly the output it used to read
    for consumer, name, src, idx in iter_links(g):
        link = out[consumer]["inputs"][name]
        if [str(link[0]), link[1]] == [src, idx]:
            continue
        node, slot = str(link[0]), link[1]
        assert node in new, f"{consumer}.{name} rewired to a pre-existing node"
        while node in new:
            back = out[node]["inputs"]["model" if slot == 0 else "clip"]
            node, slot = str(back[0]), back[1]
        assert (node, slot) == (src, idx)

    # nothing but the chain reads an output a new loader patches (every consumer was rewired),
    # except nodes the chain itself depends on (rewiring those would close a cycle)
    readers: dict[tuple[str, int], set[str]] = {}
    for consumer, _, src, idx in iter_links(out):
        readers.setdefault((src, idx), set()).add(consumer)
    for k in new:
        upstream = _ancestors(out, k)
        for value in out[k]["inputs"].values():
            if isinstance(value, list):
                outside = readers[(str(value[0]), value[1])] - new - upstream
                assert not outside, f"{value} still read outside the chain by {outside}"

    # the targeted model source's former consumers now read a LoRA output
    before = {s.node_id: s for s in find_model_sources(g)}
    for spec in specs:
        end = before[spec.target].end
        for consumer, name, src, idx in iter_links(g):
            if (src, idx) == end and consumer not in before[spec.target].chain:
                assert str(out[consumer]["inputs"][name][0]) in new

    # ComfyUI would accept the result but for model files the recorded server does not have
    assert {p.code for p in graph_problems(out, OBJECT_INFO)} <= {"value_not_in_list"}

    # idempotent
    assert inject_loras(out, specs, lora_info=info) == out
