"""Write small GGUF files of other families for the tests: a random-weight Hugging Face model of
``interp.toy_models``'s config for the family, written out under llama.cpp's tensor names (gguf-py's
own name map) with its config under transformers' GGUF keys and a byte-level BPE vocabulary (the
256 bytes and two merges), so the files are small and quick to read.

The weights need not survive the round trip exactly (transformers reorders some on reading); the
tests compare interp on the file with transformers' own reading of the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (byte-level BPE's base vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    by_byte = dict(zip(printable, codes))
    return [chr(by_byte[b]) for b in range(256)]


# the 256 bytes, two merges ("Ġt", "Ġa": older GGUF readers need merges, and read a list of one as a
# plain string) and an end-of-text token
VOCAB = 259


def write_gguf(family: str, architecture: str, path: Path) -> Path:
    """A GGUF file of a ``random-<family>`` model with a byte-level vocabulary, under llama.cpp's
    ``architecture`` name (e.g. "qwen2")."""
    import gguf
    from transformers import AutoModelForCausalLM
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from interp.toy_models import _random_configs

    torch.manual_seed(0)
    config = _random_configs(VOCAB)[family]
    config.bos_token_id = config.eos_token_id = config.pad_token_id = VOCAB - 1
    model = AutoModelForCausalLM.from_config(config)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(f"random-{family}")
    rope = getattr(config, "rope_parameters", None) or {}
    aliases = {"n_ctx": "n_positions"}  # GPT-2's context length, which its config no longer names n_ctx
    for key, field in GGUF_CONFIG_MAPPING[architecture].items():
        field = aliases.get(field, field)
        value = rope.get("rope_theta") if field == "rope_theta" else getattr(config, field, None) if field else None
        if value is None:
            continue
        full = f"{architecture}.{key}"
        if isinstance(value, float):
            writer.add_float32(full, value)
        else:
            writer.add_uint32(full, int(value))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(_byte_tokens() + ["\u0120t", "\u0120a", "<|endoftext|>"])
    writer.add_token_types([gguf.TokenType.NORMAL] * (VOCAB - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_merges(["\u0120 t", "\u0120 a"])
    writer.add_bos_token_id(VOCAB - 1)
    writer.add_eos_token_id(VOCAB - 1)
    writer.add_pad_token_id(VOCAB - 1)
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    conv1d = {f"{name}.weight" for name, module in model.named_modules() if type(module).__name__ == "Conv1D"}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"no GGUF name for {name} under {architecture}")
        if name in conv1d:  # llama.cpp keeps GPT-2's projections as [out, in]
            tensor = tensor.T
        if architecture.startswith("gemma") and name.endswith("norm.weight"):  # and Gemma's norms as 1 + weight
            tensor = tensor + 1
        writer.add_tensor(target, tensor.detach().float().contiguous().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":  # python tests/gguf_files.py qwen2 qwen2 /tmp/x.gguf
    import sys

    torch.manual_seed(0)
    print(write_gguf(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
