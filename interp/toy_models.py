"""Small models for tests and demos: random-weight configs and the trained toy models.

``random-<family>`` models use the bundled SmolLM2 tokenizer, so every task works on them.
``toy-induction`` is a 2-layer attention-only model trained by ``scripts/train_toy_induction.py``
on repeated random tokens; its checkpoint (under 1 MB) ships in ``interp/data/toy-induction``.
Its known circuit: a previous-token head in layer 0 and an induction head in layer 1.
``toy-bigram`` is a 2-layer Llama with MLPs and tied embeddings trained by
``scripts/train_toy_bigram.py`` on :func:`markov_corpus`: a known bigram chain plus repeated
halves, so the model mixes bigram statistics with induction (``interp/data/toy-bigram``).
"""

from __future__ import annotations

from pathlib import Path

import torch

TOY_INDUCTION_DIR = Path(__file__).parent / "data" / "toy-induction"
TOY_BIGRAM_DIR = Path(__file__).parent / "data" / "toy-bigram"
TOY_VOCAB = 128  # token 0 is BOS; tokens "t1".."t127"


def _random_configs(vocab: int) -> dict:
    """One tiny config per family. The first four are the long-standing test models; the rest
    are built to exercise what their family adds (sliding windows shorter than a prompt,
    soft-capping that binds, q/k norms, partial rotary, post-norms, fused projections, experts),
    with a larger initializer range so attention is far from uniform."""
    import transformers as T

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    sharp = dict(common, initializer_range=0.2)
    small = dict(num_hidden_layers=3, num_attention_heads=4, hidden_size=64, intermediate_size=96,
                 max_position_embeddings=256)
    sliding = ["sliding_attention", "full_attention", "sliding_attention"]
    return {
        "gpt2": T.GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=256, **common),
        "neox": T.GPTNeoXConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=64, intermediate_size=256,
                                max_position_embeddings=256, **common),
        "llama": T.LlamaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                               intermediate_size=128, max_position_embeddings=256, **common),
        "gemma": T.GemmaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, hidden_size=64,
                               head_dim=16, intermediate_size=128, max_position_embeddings=256, **common),
        "llama3": T.LlamaConfig(**small, num_key_value_heads=2, **sharp, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "mistral": T.MistralConfig(**small, num_key_value_heads=2, sliding_window=5, **sharp),
        "qwen2": T.Qwen2Config(**small, num_key_value_heads=2, **sharp),
        "qwen3": T.Qwen3Config(**small, num_key_value_heads=2, head_dim=16, **sharp),
        "gemma2": T.Gemma2Config(**small, num_key_value_heads=2, head_dim=16, sliding_window=5, layer_types=sliding,
                                 attn_logit_softcapping=1.0, final_logit_softcapping=3.0, query_pre_attn_scalar=16,
                                 **sharp),
        "gemma3": T.Gemma3TextConfig(**small, num_key_value_heads=2, head_dim=16, sliding_window=5, layer_types=sliding,
                                     query_pre_attn_scalar=16, **sharp),
        "phi3": T.Phi3Config(**small, num_key_value_heads=2, pad_token_id=0, **sharp,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        "olmo2": T.Olmo2Config(**small, num_key_value_heads=2, pad_token_id=0, **sharp),
        "mixtral": T.MixtralConfig(**small, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **sharp),
        "qwen2moe": T.Qwen2MoeConfig(**small, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                     moe_intermediate_size=32, shared_expert_intermediate_size=48, **sharp),
        "olmoe": T.OlmoeConfig(**small, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, pad_token_id=0,
                               **sharp),
    }


RANDOM_FAMILIES = ("gpt2", "neox", "llama", "gemma", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3",
                   "olmo2", "mixtral", "qwen2moe", "olmoe")


def random_model_dir(family: str) -> Path:
    """A cached folder with a seeded random-weight model of ``family`` and the SmolLM2 tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.loading import ModelLoadError, _atomic_dir, bundled_gguf_path, cache_dir, convert_gguf

    if family not in RANDOM_FAMILIES:
        raise ModelLoadError(f"unknown random model family {family!r}; known: {', '.join(RANDOM_FAMILIES)}")
    tokenizer_dir = convert_gguf(bundled_gguf_path())

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        config = _random_configs(len(tokenizer))[family]
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _atomic_dir(cache_dir() / "random" / family, build)


def toy_tokenizer():
    """Word-level tokenizer over "<bos>", "t1".."t127" that prepends BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, **{f"t{i}": i for i in range(1, TOY_VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<bos>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", unk_token="<bos>", pad_token="<bos>")


def toy_induction_config():
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, hidden_size=64,
                       head_dim=16, intermediate_size=1, vocab_size=TOY_VOCAB, max_position_embeddings=128,
                       bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
                       architectures=["LlamaForCausalLM"])
    config._attn_implementation = "eager"
    return config


def toy_bigram_config():
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, hidden_size=64,
                         head_dim=16, intermediate_size=256, vocab_size=TOY_VOCAB, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True,
                         architectures=["LlamaForCausalLM"])
    config._attn_implementation = "eager"
    return config


TOY_DIRS = {"toy-induction": (TOY_INDUCTION_DIR, "scripts/train_toy_induction.py"),
            "toy-bigram": (TOY_BIGRAM_DIR, "scripts/train_toy_bigram.py")}


def toy_model_dir(name: str) -> Path:
    """The shipped checkpoint folder of ``toy-induction`` or ``toy-bigram``."""
    from interp.loading import ModelLoadError

    folder, script = TOY_DIRS[name]
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{name} checkpoint missing at {folder}; run {script}")
    return folder


def markov_transitions(successors: int = 4, seed: int = 1234) -> torch.Tensor:
    """The toy bigram chain [TOY_VOCAB, TOY_VOCAB]: each token 1..127 moves to ``successors``
    random tokens with Dirichlet(1) weights (so rows range from near-certain to spread out)."""
    generator = torch.Generator().manual_seed(seed)
    transitions = torch.zeros(TOY_VOCAB, TOY_VOCAB, dtype=torch.float64)
    for token in range(TOY_VOCAB):
        nexts = torch.randperm(TOY_VOCAB - 1, generator=generator)[:successors] + 1
        weights = -torch.rand(successors, generator=generator, dtype=torch.float64).log()
        transitions[token, nexts] = weights / weights.sum()
    return transitions


def markov_corpus(n_documents: int = 400, length: int = 63, repeat_fraction: float = 0.5, seed: int = 0):
    """A :class:`~interp.corpus.Corpus` of toy-vocabulary documents ("t5 t17 ...") walked along
    :func:`markov_transitions` from a start token drawn by the chain's row 0; a ``repeat_fraction``
    of them walk half the length and then repeat that half (predictable by induction only)."""
    from interp.corpus import Corpus

    generator = torch.Generator().manual_seed(seed)
    transitions = markov_transitions()
    documents = []
    for _ in range(n_documents):
        repeat = float(torch.rand((), generator=generator)) < repeat_fraction
        steps = (length + 1) // 2 if repeat else length
        walk, token = [], 0
        for _ in range(steps):
            token = int(torch.multinomial(transitions[token], 1, generator=generator))
            walk.append(token)
        if repeat:
            walk = (walk + walk)[:length]
        documents.append(" ".join(f"t{t}" for t in walk))
    return Corpus(f"toy-markov[{n_documents}x{length},seed={seed}]", tuple(documents))


def ordinary_token_range(vocab: int) -> tuple[int, int]:
    """[low, high) of token ids that random-token prompts draw from: the whole vocabulary of a toy
    model (id 0 left for BOS), ids 1000..20000 of a real one (past the special and byte tokens)."""
    return (1, vocab) if vocab < 1000 else (1000, min(vocab, 20000))


def repeated_random_tokens(n_sequences: int, half_length: int, seed: int, low: int = 1, high: int = TOY_VOCAB,
                           bos: int = 0) -> torch.Tensor:
    """[n, 1 + 2 * half_length]: ``bos``, then a random half of ids in [low, high) repeated once
    (the defaults: the toy vocabulary)."""
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(low, high, (n_sequences, half_length), generator=generator)
    start = torch.full((n_sequences, 1), bos, dtype=torch.long)
    return torch.cat([start, half, half], dim=1)


def induction_scores(pattern: torch.Tensor, half_length: int) -> torch.Tensor:
    """Mean attention from each second-half token to the token after its first occurrence.

    pattern: [batch, heads, pos, pos] on BOS + two copies of a length-``half_length`` sequence.
    Returns [heads], in [0, 1].
    """
    queries = torch.arange(1 + half_length, 1 + 2 * half_length)
    keys = queries - half_length + 1
    return pattern[:, :, queries, keys].mean(dim=(0, 2))


def previous_token_scores(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position to the one before it. Returns [heads]."""
    queries = torch.arange(1, pattern.shape[-1])
    return pattern[:, :, queries, queries - 1].mean(dim=(0, 2))
