"""Where things live inside a Hugging Face causal LM, per architecture family.

Used by the nnsight backend (module paths for each activation kind) and by the layer-resume
machinery (the list of decoder layers). Adding a family means adding one ``Layout``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class UnsupportedArchitectureError(ValueError):
    pass


@dataclass(frozen=True)
class Layout:
    """Attribute paths, relative to the model root or to one decoder layer.

    ``qkv`` is either three paths (separate q/k/v projections) or one fused path with a
    ``fused_qkv`` style: "concat" (GPT-2: [q|k|v] along features) or "per_head" (GPT-NeoX:
    [head, (q k v), d_head]).
    """

    layers: str
    attn: str
    z_proj: str  # module whose input is the concatenated head outputs z
    qkv: tuple[str, ...]
    mlp: str
    mlp_out_proj: str  # module whose input is the MLP neurons' activations
    attn_norm: str  # the pre-norm feeding attention
    mlp_norm: str  # the pre-norm feeding the MLP
    mlp_in: str  # the MLP's input projection (the "up" projection of a gated MLP)
    mlp_act: str  # the MLP's activation function module
    final_norm: str  # the norm before the unembedding, relative to the model root
    mlp_gate: str | None = None  # the gate projection of a gated MLP (act(gate(x)) * up(x))
    fused_qkv: str | None = None


_LLAMA_LIKE = Layout(
    layers="model.layers", attn="self_attn", z_proj="self_attn.o_proj",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    mlp="mlp", mlp_out_proj="mlp.down_proj", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
    mlp_in="mlp.up_proj", mlp_act="mlp.act_fn", final_norm="model.norm", mlp_gate="mlp.gate_proj",
)

LAYOUTS: dict[str, Layout] = {
    "GPT2LMHeadModel": Layout(
        layers="transformer.h", attn="attn", z_proj="attn.c_proj", qkv=("attn.c_attn",),
        mlp="mlp", mlp_out_proj="mlp.c_proj", attn_norm="ln_1", mlp_norm="ln_2", mlp_in="mlp.c_fc",
        mlp_act="mlp.act", final_norm="transformer.ln_f", fused_qkv="concat",
    ),
    "GPTNeoXForCausalLM": Layout(
        layers="gpt_neox.layers", attn="attention", z_proj="attention.dense",
        qkv=("attention.query_key_value",), mlp="mlp", mlp_out_proj="mlp.dense_4h_to_h",
        attn_norm="input_layernorm", mlp_norm="post_attention_layernorm", mlp_in="mlp.dense_h_to_4h",
        mlp_act="mlp.act", final_norm="gpt_neox.final_layer_norm", fused_qkv="per_head",
    ),
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "GemmaForCausalLM": _LLAMA_LIKE,
}


def layout_for(architecture: str) -> Layout:
    if architecture not in LAYOUTS:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} has no module layout; supported: {', '.join(LAYOUTS)}"
        )
    return LAYOUTS[architecture]


def get_path(root: object, path: str) -> object:
    """Follow a dotted attribute path ("model.layers")."""
    for part in path.split("."):
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


def unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face module itself, under any TransformerLens bridge wrapper around it."""
    while hasattr(module, "_original_component"):
        module = module._original_component
    return module


def decoder_layers(hf_model: torch.nn.Module, architecture: str) -> torch.nn.ModuleList:
    return get_path(hf_model, layout_for(architecture).layers)
