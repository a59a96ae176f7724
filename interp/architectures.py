"""Where things live inside a Hugging Face causal LM, found from the model itself.

A :class:`Layout` names the modules every backend and analysis needs: the decoder layers, their
attention (q/k/v projections, separate or fused, and the output projection), the MLP (its input,
gate and output projections, or the experts of a mixture-of-experts block) and the norms before
and after each sublayer. :func:`discover_layout` reads it off any causal LM with a few rules:

1. The decoder layers are the shortest-named ``ModuleList`` with one entry per layer.
2. In a layer, the attention is the child whose class name says "Attention" (or that is named
   ``self_attn``, ``attn``, ``attention``); the MLP is the other child that holds the remaining
   weights (class name with MLP / MoE / FeedForward, or named ``mlp``, ``feed_forward``, ...).
3. Inside them, projections are told apart by their shapes: q has ``n_heads * d_head`` outputs,
   k and v ``n_kv_heads * d_head``, a fused q/k/v the sum; the output projection maps
   ``n_heads * d_head`` to ``d_model``; the MLP's down projection maps to ``d_model``.
   Names settle only what shapes cannot (k against v, gate against up).
4. What each norm does is read from one short probe forward: a norm whose output is what the
   attention (MLP) reads is its pre-norm; a norm that reads the attention's (MLP's) output is its
   post-norm (Gemma-2/3, OLMo-2). Attention and MLP run in parallel when the MLP's input does not
   depend on the attention's output (GPT-NeoX/Pythia, GPT-J, Phi-2).

What rules cannot know comes from :data:`OVERRIDES`, one small entry per family (today only the
head order inside a fused projection: GPT-NeoX, Persimmon). :func:`verify_layout` then
checks the result against the model's own forward at load. A model whose parts the rules cannot find gets
one line naming the part and how to add an override (``register_override``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch


class UnsupportedArchitectureError(ValueError):
    pass


@dataclass(frozen=True)
class Layout:
    """Attribute paths, relative to the model root (``layers``, ``final_norm``) or to one decoder layer.

    ``qkv`` is three paths (separate q/k/v projections) or one fused path with a ``fused_qkv``
    order: "concat" ([q | k | v] along features: GPT-2, Phi-3) or "per_head" (GPT-NeoX:
    [head, (q k v), d_head]). ``mlp_in`` is the MLP's input ("up") projection, ``mlp_gate`` the
    gate of a gated MLP (act(gate(x)) * up(x)); ``fused_gate_up`` marks one projection holding
    [gate | up] (Phi-3) in ``mlp_in``. A mixture-of-experts MLP has ``experts`` (the module that
    runs the routed experts, called as ``experts(hidden, top_k_index, top_k_weights)``) and no
    neuron-level paths. Norm paths are None where the family has no such norm.
    """

    layers: str
    attn: str
    qkv: tuple[str, ...]
    z_proj: str  # module whose input is the concatenated head outputs z
    mlp: str
    final_norm: str
    attn_norm: str | None = None  # the pre-norm feeding attention
    mlp_norm: str | None = None  # the pre-norm feeding the MLP
    attn_post_norm: str | None = None  # applied to the attention output before the residual add
    mlp_post_norm: str | None = None
    q_norm: str | None = None  # norms of queries / keys inside attention (Qwen3, OLMo-2, Gemma-3)
    k_norm: str | None = None
    fused_qkv: str | None = None
    mlp_in: str | None = None
    mlp_gate: str | None = None
    fused_gate_up: bool = False
    mlp_act: str | None = None
    mlp_out_proj: str | None = None  # module whose input is the MLP neurons' activations
    experts: str | None = None
    n_experts: int = 0
    parallel: bool = False  # attention and MLP read the same residual stream
    writes_add: bool = True  # resid_post = resid_pre + attn_out + mlp_out (False: a multiplier in between; set at load)
    layer_returns_tuple: bool = False  # a decoder layer returns (hidden_states, ...) rather than the tensor (Falcon)

    @property
    def is_moe(self) -> bool:
        return self.experts is not None

    def describe(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# What the rules cannot know, by the architecture's class name. Values replace discovered fields.
OVERRIDES: dict[str, dict[str, Any]] = {
    "GPTNeoXForCausalLM": {"fused_qkv": "per_head"},
    "PersimmonForCausalLM": {"fused_qkv": "per_head"},
}


def register_override(architecture: str, **fields_: Any) -> None:
    """Tell discovery what it cannot find for ``architecture`` (a class name such as
    ``"MyModelForCausalLM"``): any :class:`Layout` field, e.g. ``z_proj="attn.proj"`` or
    ``fused_qkv="per_head"``."""
    known = {f.name for f in fields(Layout)}
    unknown = set(fields_) - known
    if unknown:
        raise ValueError(f"unknown layout fields {sorted(unknown)}; known: {', '.join(sorted(known))}")
    OVERRIDES.setdefault(architecture, {}).update(fields_)


def get_path(root: object, path: str) -> object:
    """Follow a dotted attribute path ("model.layers"); "" is ``root`` itself."""
    for part in path.split(".") if path else ():
        root = getattr(root, part)
    return root


def split_fused_qkv(layout: Layout, fused: torch.Tensor, n_heads: int, n_kv: int, d_head: int) -> list[torch.Tensor]:
    """Split a fused q/k/v projection output [..., features] into q, k, v [..., heads, d_head]."""
    lead = fused.shape[:-1]
    if layout.fused_qkv == "concat":
        parts = fused.split([n_heads * d_head, n_kv * d_head, n_kv * d_head], dim=-1)
        return [part.reshape(*lead, n, d_head) for part, n in zip(parts, (n_heads, n_kv, n_kv))]
    per_head = fused.reshape(*lead, n_heads, 3 * d_head)
    return list(per_head.split(d_head, dim=-1))


def join_fused_qkv(layout: Layout, parts: list[torch.Tensor]) -> torch.Tensor:
    """The inverse of :func:`split_fused_qkv`: q, k, v [batch, pos, heads, d_head] -> [batch, pos, features]."""
    batch, pos = parts[0].shape[:2]
    if layout.fused_qkv == "concat":
        return torch.cat([p.reshape(batch, pos, -1) for p in parts], dim=-1)
    return torch.cat(parts, dim=-1).reshape(batch, pos, -1)


def decoder_layers(hf_model: torch.nn.Module, layout: Layout) -> torch.nn.ModuleList:
    return get_path(hf_model, layout.layers)


# ----------------------------------------------------------------------------- discovery
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "mixer")
_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn", "mlp_block")
_OUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "wo", "o_proj_layer", "proj")


@dataclass(frozen=True)
class Shapes:
    """The sizes discovery matches projections against."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int


def linear_features(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a projection (nn.Linear, or GPT-2's Conv1D); None otherwise."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or list(module.children()):
        return None
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return weight.shape[0], weight.shape[1]
    if isinstance(module, torch.nn.Embedding):
        return None
    return weight.shape[1], weight.shape[0]


def is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) or "norm" in type(module).__name__.lower()


def _fail(model_name: str, architecture: str, part: str, looked: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{model_name} ({architecture}): could not find {part} ({looked}); tell interp where it is with "
        f"interp.architectures.register_override({architecture!r}, <field>='<module path>') before loading"
    )


def discover_layout(hf_model: torch.nn.Module, shapes: Shapes, model_name: str,
                    probe_model: torch.nn.Module | None = None) -> Layout:
    """The :class:`Layout` of ``hf_model`` (a Hugging Face causal LM, not yet wrapped by a backend).

    ``probe_model`` is the model whose forward the probe runs: ``hf_model`` itself by default, a
    :func:`stand_in` when ``hf_model`` has no weights here (pass one already built to reuse it)."""
    architecture = type(hf_model).__name__
    override = OVERRIDES.get(architecture, {})

    def fail(part: str, looked: str) -> UnsupportedArchitectureError:
        return _fail(model_name, architecture, part, looked)

    layers_path = override.get("layers") or _find_layers(hf_model, shapes.n_layers)
    if layers_path is None:
        raise fail("the decoder layers", f"no ModuleList of {shapes.n_layers} entries")
    layers = get_path(hf_model, layers_path)
    layer = layers[0]
    children = dict(layer.named_children())

    attn = override.get("attn") or _pick_child(children, _ATTENTION_NAMES, ("attention",))
    if attn is None:
        raise fail("the attention module", f"a child of {layers_path}.0 named {'/'.join(_ATTENTION_NAMES)} or whose class says Attention")
    others = {k: v for k, v in children.items() if k != attn}
    mlp = override.get("mlp") or _pick_child(others, _MLP_NAMES, ("mlp", "moe", "feedforward", "ffn"))
    if mlp is None:
        raise fail("the MLP", f"a child of {layers_path}.0 named {'/'.join(_MLP_NAMES)} or whose class says MLP/MoE")
    found: dict[str, Any] = {"layers": layers_path, "attn": attn, "mlp": mlp}
    found.update(_attention_parts(children[attn], attn, shapes, fail, override))
    found.update(_mlp_parts(children[mlp], mlp, shapes, fail, override))
    found["final_norm"] = override.get("final_norm") or _find_final_norm(hf_model, layers_path)
    if found["final_norm"] is None:
        raise fail("the final norm", "a norm module outside the decoder layers")
    found.update(override)
    if probe_model is None:
        probe_model = stand_in(hf_model) if weightless(hf_model) else hf_model
    probe_fields = _probe(probe_model, get_path(probe_model, layers_path)[0], found, shapes, fail)
    found.update({k: v for k, v in probe_fields.items() if k not in override})
    layout = Layout(**found)
    _check_every_layer(layers, layout, fail)
    return layout


def weightless(hf_model: torch.nn.Module) -> bool:
    """Whether ``hf_model`` has only meta tensors and nothing to load them (a remote model's local
    modules), so no forward can run here."""
    return (all(p.device.type == "meta" for p in hf_model.parameters())
            and not any(getattr(m, "_hf_hook", None) is not None for m in hf_model.modules()))


STAND_IN_VOCAB = 256
STAND_IN_MLP = 64


def stand_in(hf_model: torch.nn.Module) -> torch.nn.Module:
    """A local model of ``hf_model``'s class and config with one decoder layer, a small vocabulary
    and narrow MLPs, seeded random weights: the same module structure and data flow, so layout
    discovery and its verification run on it when ``hf_model`` has no weights here (NDIF). The
    attention's widths stay as they are."""
    import copy

    config = copy.deepcopy(hf_model.config)
    config.num_hidden_layers = 1  # every family's config maps this name to its own field
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:1]
    config.vocab_size = STAND_IN_VOCAB
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= STAND_IN_VOCAB:
            setattr(config, key, 0)
    for key in ("intermediate_size", "moe_intermediate_size", "n_inner"):
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, STAND_IN_MLP)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = type(hf_model)(config).eval().requires_grad_(False)
    model.set_attn_implementation("eager")  # the probe and its verification read attention probabilities
    return model


def _find_layers(root: torch.nn.Module, n_layers: int) -> str | None:
    candidates = [name for name, module in root.named_modules()
                  if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and name]
    return min(candidates, key=lambda name: (name.count("."), len(name)), default=None)


def _pick_child(children: dict[str, torch.nn.Module], names: tuple[str, ...], class_words: tuple[str, ...]) -> str | None:
    for name in names:
        if name in children:
            return name
    for name, child in children.items():
        lowered = type(child).__name__.lower()
        if any(word in lowered for word in class_words) and not is_norm(child):
            return name
    return None


def _projections(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, int]]:
    """Every projection below ``module``, by path relative to the layer: (in, out) features."""
    found = {}
    for name, child in module.named_modules():
        features = linear_features(child)
        if features is not None and name:
            found[f"{prefix}.{name}"] = features
    return found


def _leaf_name(path: str) -> str:
    return path.rsplit(".", 1)[-1].lower()


def _attention_parts(attention: torch.nn.Module, prefix: str, s: Shapes, fail, override: dict) -> dict[str, Any]:
    """q/k/v, the output projection and q/k norms inside the attention (fields in ``override``
    are taken as given)."""
    projections = _projections(attention, prefix)
    q_width, kv_width = s.n_heads * s.d_head, s.n_kv_heads * s.d_head
    fused = [p for p, (i, o) in projections.items() if i == s.d_model and o == q_width + 2 * kv_width]
    outs = [override["z_proj"]] if "z_proj" in override else [
        p for p, (i, o) in projections.items() if i == q_width and o == s.d_model]
    named_outs = [p for p in outs if _leaf_name(p) in _OUT_NAMES]
    if len(outs) > 1:
        outs = named_outs
    if len(outs) != 1:
        raise fail("the attention output projection", f"one projection in {prefix} from {q_width} to {s.d_model} features "
                   f"named {'/'.join(_OUT_NAMES)}; found {sorted(projections)}")
    parts: dict[str, Any] = {"z_proj": outs[0]}
    inputs = {p: f for p, f in projections.items() if p != outs[0] and f[0] == s.d_model}
    if "qkv" in override:
        parts["qkv"] = tuple(override["qkv"])
        if len(parts["qkv"]) == 1:
            parts["fused_qkv"] = override.get("fused_qkv", "concat")
    elif fused and not [p for p, (i, o) in inputs.items() if o == q_width and p not in fused]:
        parts.update(qkv=(fused[0],), fused_qkv="concat")
    else:
        def named(width: int, letters: tuple[str, ...]) -> list[str]:
            return [p for p, (i, o) in inputs.items() if o == width and _leaf_name(p).startswith(letters)]

        q = named(q_width, ("q", "wq"))
        k = named(kv_width, ("k", "wk"))
        v = named(kv_width, ("v", "wv"))
        if not (len(q) == len(k) == len(v) == 1):
            raise fail("the q/k/v projections", f"q ({q_width} outputs), k and v ({kv_width}) named q*/k*/v* in {prefix}, "
                       f"or one fused projection of {q_width + 2 * kv_width}; found {sorted(inputs)}")
        parts["qkv"] = (q[0], k[0], v[0])
    norms = {name: child for name, child in attention.named_children() if is_norm(child)}
    for which in ("q", "k"):
        match = [name for name in norms if _leaf_name(name).startswith(which)]
        if len(match) == 1:
            parts[f"{which}_norm"] = f"{prefix}.{match[0]}"
    return parts


def _mlp_parts(mlp: torch.nn.Module, prefix: str, s: Shapes, fail, override: dict) -> dict[str, Any]:
    """The MLP's projections and activation, or its experts (fields in ``override`` are taken as
    given: with ``mlp_out_proj`` and ``mlp_in`` both overridden, no rule runs)."""
    if "mlp_out_proj" in override and "mlp_in" in override:
        return {}
    experts = [name for name, child in mlp.named_children()
               if any(p.dim() == 3 for p in child.parameters(recurse=False))]
    if experts:
        n_experts = next(p.shape[0] for p in getattr(mlp, experts[0]).parameters(recurse=False) if p.dim() == 3)
        return {"experts": f"{prefix}.{experts[0]}", "n_experts": int(n_experts)}
    if any(isinstance(child, torch.nn.ModuleList) for child in mlp.children()):
        raise fail("the experts of this mixture-of-experts MLP", f"a module in {prefix} holding every expert's weights as "
                   "3-D tensors (transformers 5's fused experts); per-expert module lists are not read")
    projections = _projections(mlp, prefix)
    downs = [p for p, (i, o) in projections.items() if o == s.d_model and i != s.d_model]
    if len(downs) != 1:
        raise fail("the MLP output projection", f"one projection in {prefix} to {s.d_model} features; found {sorted(projections)}")
    d_mlp = projections[downs[0]][0]
    ins = {p: o for p, (i, o) in projections.items() if i == s.d_model}
    parts: dict[str, Any] = {"mlp_out_proj": downs[0]}
    fused = [p for p, o in ins.items() if o == 2 * d_mlp]
    plain = [p for p, o in ins.items() if o == d_mlp]
    if fused and not plain:
        parts.update(mlp_in=fused[0], fused_gate_up=True)
    elif len(plain) == 1:
        parts["mlp_in"] = plain[0]
    elif len(plain) == 2:
        gate = [p for p in plain if "gate" in _leaf_name(p) or _leaf_name(p) == "w1"]
        if len(gate) != 1:
            raise fail("the gate of the gated MLP", f"one of {plain} named *gate* or w1")
        parts.update(mlp_gate=gate[0], mlp_in=next(p for p in plain if p != gate[0]))
    else:
        raise fail("the MLP input projection", f"one or two projections in {prefix} from {s.d_model} to {d_mlp} features, "
                   f"or one to {2 * d_mlp} (fused gate and up); found {sorted(projections)}")
    acts = [name for name, child in mlp.named_children()
            if not list(child.parameters()) and not isinstance(child, torch.nn.Dropout)]
    if len(acts) != 1:
        raise fail("the MLP activation function", f"one parameter-free child of {prefix} that is not dropout; found {acts}")
    parts["mlp_act"] = f"{prefix}.{acts[0]}"
    return parts


def _find_final_norm(root: torch.nn.Module, layers_path: str) -> str | None:
    norms = [name for name, module in root.named_modules()
             if name and is_norm(module) and not name.startswith(layers_path + ".")]
    return min(norms, key=lambda name: (name.count("."), len(name)), default=None)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and (a is b or torch.equal(a, b))


@torch.no_grad()
def _probe(hf_model: torch.nn.Module, layer: torch.nn.Module, found: dict, s: Shapes, fail) -> dict[str, Any]:
    """Run one short forward with hooks on layer 0 and read which norm feeds or follows what."""
    seen: dict[str, dict[str, torch.Tensor | None]] = {}
    watched = {"": layer, found["attn"]: get_path(layer, found["attn"]), found["mlp"]: get_path(layer, found["mlp"])}
    norms = {name: child for name, child in layer.named_children() if is_norm(child)}
    watched.update(norms)
    handles = []
    for name, module in watched.items():
        def hook(module, args, kwargs, output, name=name):
            first = args[0] if args else kwargs.get("hidden_states")
            seen[name] = {"input": first if isinstance(first, torch.Tensor) else None, "output": _first_tensor(output),
                          "tuple": isinstance(output, tuple)}
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        vocab = hf_model.get_input_embeddings().weight.shape[0]
        device = next(hf_model.parameters()).device
        tokens = (torch.arange(5, device=device)[None] * 37 + 3) % vocab
        hf_model(tokens, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    attn, mlp, block = seen[found["attn"]], seen[found["mlp"]], seen[""]
    roles: dict[str, Any] = {"attn_norm": None, "mlp_norm": None, "attn_post_norm": None, "mlp_post_norm": None}

    def matches(io: dict, same) -> list[str]:
        return [role for role, hit in (("attn_norm", same(io["output"], attn["input"])),
                                       ("mlp_norm", same(io["output"], mlp["input"])),
                                       ("attn_post_norm", same(io["input"], attn["output"])),
                                       ("mlp_post_norm", same(io["input"], mlp["output"]))) if hit]

    assigned: set[str] = set()
    # the very tensor first; equal values only for what that leaves open (norms of equal weights
    # compute equal values, so a value match alone could name the wrong one)
    for same in (lambda a, b: a is not None and a is b, _same):
        for name in norms:
            io = seen.get(name)
            if io is None or name in assigned:
                continue
            for role in matches(io, same):  # one norm may feed both sublayers (a parallel block's shared pre-norm)
                if roles[role] is None:
                    roles[role] = name
                    assigned.add(name)
    if roles["attn_post_norm"] is not None and roles["attn_post_norm"] == roles["mlp_norm"]:
        raise fail("the attention's own output", f"the norm {roles['mlp_norm']} reads the attention module's output and feeds "
                   "the MLP, so the attention module adds the residual stream itself (as Bloom's does); interp needs each "
                   "sublayer's own output")
    unexplained = [name for name in norms if name in seen and name not in assigned]
    if unexplained:
        raise fail(f"what the norm {found['layers']}.0.{unexplained[0]} does", "it neither feeds nor follows the attention "
                   "or the MLP in a probe forward")
    mlp_reads = mlp["input"] if roles["mlp_norm"] is None else seen[roles["mlp_norm"]]["input"]
    attn_reads = attn["input"] if roles["attn_norm"] is None else seen[roles["attn_norm"]]["input"]
    roles["layer_returns_tuple"] = block["tuple"]
    roles["parallel"] = _same(mlp_reads, block["input"]) or _same(mlp["input"], attn["input"]) or _same(mlp_reads, attn_reads)
    return roles


def _check_every_layer(layers: torch.nn.ModuleList, layout: Layout, fail) -> None:
    paths = [p for p in (layout.attn, *layout.qkv, layout.z_proj, layout.mlp, layout.attn_norm, layout.mlp_norm,
                         layout.attn_post_norm, layout.mlp_post_norm, layout.q_norm, layout.k_norm, layout.mlp_in,
                         layout.mlp_gate, layout.mlp_act, layout.mlp_out_proj, layout.experts) if p]
    reference = {p: type(get_path(layers[0], p)) for p in paths}
    for index, layer in enumerate(layers):
        for path, kind in reference.items():
            try:
                module = get_path(layer, path)
            except AttributeError:
                raise fail(f"{path} in decoder layer {index}", "layer 0 has it; interp needs every layer built alike") from None
            if type(module) is not kind:
                raise fail(f"a {kind.__name__} at {path} in decoder layer {index}",
                           f"it is a {type(module).__name__} there; interp needs every layer built alike")


@torch.no_grad()
def verify_layout(model) -> Layout:
    """Check what discovery found against the model's own computation, on one short forward at
    layer 0: the values recomputed from the weights (pre-norm, then the value projection as
    interp splits it) must be the backend's values, and the head outputs (the output
    projection's input) the attention-weighted sums of them, ``z_h[s] = sum_t A_h[s, t] v_g(h)[t]``
    with the model's own pattern A. A fused q/k/v read in the wrong head order, a wrong pre-norm
    or a wrong output projection fails here (one line) instead of giving wrong numbers later.

    Returns the layout with ``writes_add`` measured: whether the residual stream leaving layer 0
    is its input plus the attention and MLP outputs (Granite's residual multiplier breaks that).
    """
    from interp.components import Site
    from interp.shortcuts import rounding_rtol
    from interp.sublayers import Sublayers

    config, layout = model.config, model.layout
    tokens = (torch.arange(6, device=model.device)[None] * 101 + 7) % max(config.d_vocab - 1, 1) + 1
    sites = [Site(kind, 0) for kind in ("resid_pre", "v", "pattern", "z", "attn_out", "mlp_out", "resid_post")]
    _, cache = model.run_with_cache(tokens, sites)
    v = cache[Site("v", 0)].float()
    recomputed = Sublayers(model).attention_inputs(0, cache[Site("resid_pre", 0)])[2].float()
    v_gap = (recomputed - v).abs().max().item()
    expected = torch.einsum("bhst,bthd->bshd", cache[Site("pattern", 0)].float(),
                            v.repeat_interleave(config.heads_per_kv_group, dim=2))
    z = cache[Site("z", 0)].float()
    gap = max(v_gap, (expected - z).abs().max().item())
    if not gap <= rounding_rtol(1e-3, model.dtype, ulps=4) * max(1.0, z.abs().max().item(), v.abs().max().item()):
        fused = f" (fused, read in {layout.fused_qkv!r} order)" if layout.fused_qkv else ""
        raise UnsupportedArchitectureError(
            f"{config.name} ({config.architecture}): layer 0's head outputs (the input of {layout.z_proj}) are not the "
            f"attention-weighted values of {layout.qkv[-1]}{fused} (off by {gap:.2g}); tell interp how to read them with "
            f"interp.architectures.register_override({config.architecture!r}, fused_qkv='per_head' or 'concat', "
            "z_proj='<module path>')"
        )
    written = cache[Site("resid_pre", 0)] + cache[Site("attn_out", 0)] + cache[Site("mlp_out", 0)]
    residual = cache[Site("resid_post", 0)]
    adds = (written - residual).abs().max().item() <= rounding_rtol(1e-4, model.dtype, ulps=4) * max(1.0, residual.abs().max().item())
    return replace(layout, writes_add=adds)
