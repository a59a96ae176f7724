"""Small models for tests and demos: random-weight configs and the trained toy induction model.

``random-<family>`` models use the bundled SmolLM2 tokenizer, so every task works on them.
``toy-induction`` is a 2-layer attention-only model trained by ``scripts/train_toy_induction.py``
on repeated random tokens; its checkpoint (under 1 MB) ships in ``interp/data/toy-induction``.
Its known circuit: a previous-token head in layer 0 and an induction head in layer 1.
"""

from __future__ import annotations

from pathlib import Path

import torch

TOY_INDUCTION_DIR = Path(__file__).parent / "data" / "toy-induction"
TOY_VOCAB = 128  # token 0 is BOS; tokens "t1".."t127"


def _random_configs(vocab: int) -> dict:
    from transformers import GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    return {
        "gpt2": GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=256, **common),
        "neox": GPTNeoXConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=64, intermediate_size=256,
                              max_position_embeddings=256, **common),
        "llama": LlamaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                             intermediate_size=128, max_position_embeddings=256, **common),
        "gemma": GemmaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, hidden_size=64,
                             head_dim=16, intermediate_size=128, max_position_embeddings=256, **common),
    }


RANDOM_FAMILIES = ("gpt2", "neox", "llama", "gemma")


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


def toy_induction_dir() -> Path:
    from interp.loading import ModelLoadError

    if not (TOY_INDUCTION_DIR / "config.json").exists():
        raise ModelLoadError(f"toy-induction checkpoint missing at {TOY_INDUCTION_DIR}; run scripts/train_toy_induction.py")
    return TOY_INDUCTION_DIR


def repeated_random_tokens(n_sequences: int, half_length: int, seed: int) -> torch.Tensor:
    """[n, 1 + 2 * half_length]: BOS, then a random half repeated once (toy vocabulary ids)."""
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(1, TOY_VOCAB, (n_sequences, half_length), generator=generator)
    bos = torch.zeros(n_sequences, 1, dtype=torch.long)
    return torch.cat([bos, half, half], dim=1)


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
