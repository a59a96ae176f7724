"""RASP programs compiled by tracr, ported to Hugging Face GPT-2 checkpoints with known circuits.

tracr (Lindner et al. 2023) compiles a RASP program into a transformer in which every block reads
and writes named subspaces of the residual stream, so which block feeds which is known exactly.
The compiled model has learned token + position embeddings, attention logits q.k / sqrt(key_size),
ReLU MLPs, no layer norm, and (for most programs) attention that is not causal. A GPT-2
checkpoint holds it exactly, so every interp analysis runs on it unchanged:

* layer norms become identities: one extra residual dimension holds minus the sum of all the
  others (every embedding row and every block output is made to sum to zero), so the residual
  stream has mean zero; with epsilon 1e12 and gain 1e6, (x - mean) / sqrt(var + eps) * gain is
  x to float32 precision (var stays far below one float32 step of 1e12);
* non-causal programs set ``is_causal = False`` in the config (transformers then builds a
  bidirectional mask; interp's patching no longer assumes earlier positions are untouched);
* sqrt(d_head / key_size) is folded into the query weights, so GPT-2's 1 / sqrt(d_head) scale
  gives tracr's 1 / sqrt(key_size);
* heads are zero-padded to d_head = d_model / n_heads and MLPs to the widest hidden layer.

The ground truth is weight connectivity in tracr's own parameters: ``tracr.json`` in each
checkpoint folder records the residual labels each node reads and writes (an edge u -> d is in the
circuit when d reads a label u writes; see ``circuits.ground_truth``), and tracr's own outputs on
sample inputs (so tests check the port without jax).

Compiling needs the ``tracr`` extra (``pip install -e .[tracr]``); loading a bundled port does not.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

TRACR_DIR = Path(__file__).parent / "data"
BOS = "BOS"
LN_EPS = 1e12
LN_GAIN = 1e6
_NONZERO = 1e-9


@dataclass(frozen=True)
class TracrProgram:
    """A RASP program to compile: the vocabulary, the longest input, causality, and a Python
    reference ``expected(tokens) -> outputs`` (one output per input token; BOS excluded)."""

    name: str
    vocab: tuple[str, ...]
    max_seq_len: int
    causal: bool
    numerical_output: bool
    expected: Callable[[Sequence[str]], list]

    @property
    def model_name(self) -> str:
        return f"tracr-{self.name}"

    def build(self):
        """The RASP program (imports tracr). Labels carry a process-wide counter ("length_5");
        restarting it makes them, and so the checkpoint's metadata, the same in every process."""
        from tracr.compiler import lib
        from tracr.rasp import rasp

        rasp.RASPExpr._ids = itertools.count(1)

        if self.name == "reverse":
            return lib.make_reverse(rasp.tokens)
        if self.name == "frac-prevs":
            return lib.make_frac_prevs(rasp.numerical(rasp.Map(lambda t: 1 if t == "x" else 0, rasp.tokens)))
        raise ValueError(f"no RASP builder for {self.name!r}")


def _frac_prevs(tokens: Sequence[str]) -> list[float]:
    counts = np.cumsum([t == "x" for t in tokens])
    return list(counts / np.arange(1, len(tokens) + 1))


PROGRAMS = {
    "reverse": TracrProgram("reverse", ("a", "b", "c", "d"), 5, causal=False, numerical_output=False,
                            expected=lambda tokens: list(tokens)[::-1]),
    "frac-prevs": TracrProgram("frac-prevs", ("x", "y", "z"), 6, causal=True, numerical_output=True,
                               expected=_frac_prevs),
}
TRACR_MODELS = tuple(program.model_name for program in PROGRAMS.values())


def tracr_model_dir(name: str) -> Path:
    """The shipped checkpoint folder of ``tracr-reverse`` or ``tracr-frac-prevs``."""
    from interp.loading import ModelLoadError

    folder = TRACR_DIR / name
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{name} checkpoint missing at {folder}; run scripts/compile_tracr.py")
    return folder


def read_metadata(model_dir: str | Path) -> dict | None:
    """``tracr.json`` of a ported checkpoint folder, or None for any other model."""
    path = Path(model_dir) / "tracr.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- the port ----------------------------------------------------------------------------------

@dataclass
class _Tracr:
    """tracr's parameters as numpy arrays, with what the port needs to name things."""

    params: dict[str, dict[str, np.ndarray]]
    labels: list[str]  # residual dimension names
    input_ids: dict[str, int]  # token -> tracr input id
    output_label: str
    output_values: list[str]  # [] for a numerical output
    n_layers: int
    n_heads: int
    key_size: int
    mlp_hidden: int

    def layer(self, i: int, block: str) -> dict[str, np.ndarray]:
        return self.params[f"transformer/layer_{i}/{block}"]

    def output_rows(self) -> dict[str, int]:
        """Output token -> residual dimension the unembedding reads for it."""
        if not self.output_values:
            return {self.output_label: self.labels.index(self.output_label)}
        return {v: self.labels.index(f"{self.output_label}:{v}") for v in self.output_values}


def _from_assembled(assembled, program: TracrProgram, output_label: str) -> _Tracr:
    params = {name: {k: np.asarray(v, dtype=np.float64) for k, v in group.items()} for name, group in assembled.params.items()}
    cfg = assembled.model_config
    labels = [str(label) for label in assembled.residual_labels]
    values = [] if program.numerical_output else sorted(str(v) for v in assembled.output_encoder.encoding_map)
    inputs = {str(k): int(v) for k, v in assembled.input_encoder.encoding_map.items()}
    return _Tracr(params, labels, inputs, output_label, values, cfg.num_layers, cfg.num_heads, cfg.key_size,
                  cfg.mlp_hidden_size)


def _zero_sum(rows: np.ndarray, n_residual: int, d_model: int) -> np.ndarray:
    """Place [..., n_residual] writes into [..., d_model], the compensation column holding -sum."""
    out = np.zeros(rows.shape[:-1] + (d_model,))
    out[..., :n_residual] = rows
    out[..., n_residual] = -rows.sum(-1)
    return out


def gpt2_port(tracr: _Tracr, causal: bool) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """(GPT-2 config kwargs, state dict, vocabulary) holding ``tracr`` exactly (see module doc)."""
    R, H, K = len(tracr.labels), tracr.n_heads, tracr.key_size
    d_head = max(K, -(-(R + 1) // H))
    d_model = H * d_head
    hidden = tracr.mlp_hidden
    vocab = [BOS] + sorted(t for t in tracr.input_ids if t not in (BOS, "compiler_pad"))
    vocab += [t for t in tracr.output_rows() if t not in vocab]
    state: dict[str, np.ndarray] = {}

    wte = np.zeros((len(vocab), R))
    token_embed = tracr.params["token_embed"]["embeddings"]
    for token, tracr_id in tracr.input_ids.items():
        if token in vocab:
            wte[vocab.index(token)] = token_embed[tracr_id]
    state["transformer.wte.weight"] = _zero_sum(wte, R, d_model)
    state["transformer.wpe.weight"] = _zero_sum(tracr.params["pos_embed"]["embeddings"], R, d_model)
    unembed = np.zeros((len(vocab), d_model))
    for token, dim in tracr.output_rows().items():
        unembed[vocab.index(token), dim] = 1.0
    state["lm_head.weight"] = unembed

    scale = {"query": np.sqrt(d_head / K), "key": 1.0, "value": 1.0}  # GPT-2 divides by sqrt(d_head)
    for i in range(tracr.n_layers):
        prefix = f"transformer.h.{i}."
        qkv_w, qkv_b = np.zeros((d_model, 3 * d_model)), np.zeros(3 * d_model)
        out_w = np.zeros((d_model, R))
        for part, name in enumerate(("query", "key", "value")):
            block = tracr.layer(i, f"attn/{name}")
            for h in range(H):
                cols = slice(part * d_model + h * d_head, part * d_model + h * d_head + K)
                qkv_w[:R, cols] = block["w"][:, h * K:(h + 1) * K] * scale[name]
                qkv_b[cols] = block["b"][h * K:(h + 1) * K] * scale[name]
        linear = tracr.layer(i, "attn/linear")
        for h in range(H):
            out_w[h * d_head:h * d_head + K] = linear["w"][h * K:(h + 1) * K]
        mlp_in, mlp_out = tracr.layer(i, "mlp/linear_1"), tracr.layer(i, "mlp/linear_2")
        fc_w = np.zeros((d_model, hidden))
        fc_w[:R] = mlp_in["w"]
        state |= {
            prefix + "attn.c_attn.weight": qkv_w, prefix + "attn.c_attn.bias": qkv_b,
            prefix + "attn.c_proj.weight": _zero_sum(out_w, R, d_model),
            prefix + "attn.c_proj.bias": _zero_sum(linear["b"], R, d_model),
            prefix + "mlp.c_fc.weight": fc_w, prefix + "mlp.c_fc.bias": mlp_in["b"],
            prefix + "mlp.c_proj.weight": _zero_sum(mlp_out["w"], R, d_model),
            prefix + "mlp.c_proj.bias": _zero_sum(mlp_out["b"], R, d_model),
        }
        for norm in ("ln_1", "ln_2"):
            state[prefix + f"{norm}.weight"] = np.full(d_model, LN_GAIN)
            state[prefix + f"{norm}.bias"] = np.zeros(d_model)
    state["transformer.ln_f.weight"] = np.full(d_model, LN_GAIN)
    state["transformer.ln_f.bias"] = np.zeros(d_model)

    config = dict(vocab_size=len(vocab), n_positions=state["transformer.wpe.weight"].shape[0], n_embd=d_model,
                  n_layer=tracr.n_layers, n_head=H, n_inner=hidden, activation_function="relu",
                  layer_norm_epsilon=LN_EPS, tie_word_embeddings=False,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                  is_causal=causal, architectures=["GPT2LMHeadModel"])
    return config, {k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}, vocab


# --- ground truth ------------------------------------------------------------------------------

def _dims(matrix: np.ndarray, axis: int) -> set[int]:
    """Residual dimensions a matrix touches (rows with axis=1 nonzero, or columns with axis=0)."""
    return set(np.nonzero(np.abs(matrix).max(axis=axis) > _NONZERO)[0].tolist())


def node_spaces(tracr: _Tracr) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """(writes, reads): residual dimensions each upstream node writes and each downstream node
    reads, named as in :class:`circuits.edge_graph.EdgeGraph` (GPT-2: one KV group per head)."""
    K = tracr.key_size
    embed = np.concatenate([tracr.params["token_embed"]["embeddings"], tracr.params["pos_embed"]["embeddings"]])
    writes = {"EMBED": _dims(embed, 0)}
    reads = {"LOGITS": set(tracr.output_rows().values())}
    for i in range(tracr.n_layers):
        linear = tracr.layer(i, "attn/linear")["w"]
        for h in range(tracr.n_heads):
            writes[f"L{i}.H{h}"] = _dims(linear[h * K:(h + 1) * K], 0)
            for name, letter in (("query", "Q"), ("key", "K"), ("value", "V")):
                reads[f"L{i}.{letter}{h}"] = _dims(tracr.layer(i, f"attn/{name}")["w"][:, h * K:(h + 1) * K], 1)
        writes[f"L{i}.MLP"] = _dims(tracr.layer(i, "mlp/linear_2")["w"], 0)
        reads[f"L{i}.MLP"] = _dims(tracr.layer(i, "mlp/linear_1")["w"], 1)
    return writes, reads


# --- compiling (needs tracr) -------------------------------------------------------------------

def sample_inputs(program: TracrProgram, length: int, n: int, seed: int) -> list[list[str]]:
    """``n`` random inputs of ``length`` tokens (no BOS), every distinct one when there are fewer."""
    every = list(itertools.product(program.vocab, repeat=length))
    if len(every) <= n:
        return [list(t) for t in every]
    rng = random.Random(seed)
    return [list(t) for t in rng.sample(every, n)]


def compile_program(name: str, out_dir: str | Path) -> Path:
    """Compile ``PROGRAMS[name]`` with tracr and write the GPT-2 port to ``out_dir``."""
    from tracr.compiler import compiling
    from transformers import GPT2Config, GPT2LMHeadModel

    program = PROGRAMS[name]
    rasp_program = program.build()
    assembled = compiling.compile_rasp_to_model(rasp_program, vocab=set(program.vocab),
                                                max_seq_len=program.max_seq_len, compiler_bos=BOS,
                                                causal=program.causal)
    tracr = _from_assembled(assembled, program, rasp_program.label)
    config_kwargs, state, vocab = gpt2_port(tracr, program.causal)
    config = GPT2Config(**config_kwargs)
    model = GPT2LMHeadModel(config)
    model.load_state_dict(state, strict=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tracr_tokenizer(vocab).save_pretrained(out_dir)

    writes, reads = node_spaces(tracr)
    samples = sample_inputs(program, program.max_seq_len, 32, seed=0)
    reference = [{"input": s, "output": [_plain(v) for v in assembled.apply([BOS, *s]).decoded[1:]]} for s in samples]
    named = lambda dims: sorted(tracr.labels[d] for d in dims)  # noqa: E731
    metadata = {
        "program": name, "vocab": list(program.vocab), "max_seq_len": program.max_seq_len,
        "causal": program.causal, "numerical_output": program.numerical_output,
        "output_label": tracr.output_label, "output_tokens": list(tracr.output_rows()),
        "residual_labels": tracr.labels,
        "writes": {node: named(dims) for node, dims in writes.items()},
        "reads": {node: named(dims) for node, dims in reads.items()},
        "reference_outputs": reference,
    }
    (out_dir / "tracr.json").write_text(json.dumps(metadata, indent=1))
    return out_dir


def _plain(value):
    return float(value) if isinstance(value, (float, np.floating)) else str(value)


def tracr_tokenizer(vocab: Sequence[str]):
    """Word-level tokenizer over ``vocab`` (id 0 is BOS) that prepends BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocab)}, unk_token=BOS))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, unk_token=BOS, pad_token=BOS)
