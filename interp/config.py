"""The shape of a loaded model, independent of the backend that runs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a decoder-only transformer.

    ``n_kv_heads`` < ``n_heads`` for grouped-query attention (query head h reads KV group
    ``h // (n_heads // n_kv_heads)``).
    """

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    parallel_attn_mlp: bool = False
    causal: bool = True  # False for bidirectional attention (tracr ports of non-causal programs)
    n_experts: int = 0  # routed experts of a mixture-of-experts MLP (0: a dense MLP)

    @property
    def heads_per_kv_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_hf(hf_config, name: str) -> ModelConfig:
    """Read the sizes from a Hugging Face config (the field names of GPT-2, GPT-NeoX and the
    Llama-style families). Structure (parallel blocks, experts) comes from the module tree:
    ``interp.architectures.discover_layout``."""

    def first(*fields, default=None):
        for field in fields:
            value = getattr(hf_config, field, None)
            if value is not None:
                return value
        return default

    d_model = first("hidden_size", "n_embd", "d_model")
    n_heads = first("num_attention_heads", "n_head")
    architecture = (getattr(hf_config, "architectures", None) or [type(hf_config).__name__])[0]
    return ModelConfig(
        name=name,
        architecture=architecture,
        n_layers=first("num_hidden_layers", "n_layer"),
        n_heads=n_heads,
        n_kv_heads=1 if getattr(hf_config, "multi_query", False) and not getattr(hf_config, "new_decoder_architecture", False)
        else first("num_key_value_heads", "num_kv_heads", "n_head_kv", default=n_heads),
        d_model=d_model,
        d_head=first("head_dim", default=d_model // n_heads),
        d_mlp=first("intermediate_size", "n_inner", default=4 * d_model),
        d_vocab=hf_config.vocab_size,
        n_ctx=first("max_position_embeddings", "n_positions", default=2048),
        parallel_attn_mlp=bool(first("use_parallel_residual", default=False)),
        causal=bool(getattr(hf_config, "is_causal", True)),
    )
