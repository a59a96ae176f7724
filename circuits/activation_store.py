"""Streams training activations for sparse dictionaries from a ``Model`` over token chunks.

An SAE reads one site (``L3.RESID_POST``, ``L3.ATTN``, ``L3.MLP``, ...: any [batch, pos, d_model]
component); a transcoder at layer l reads the MLP's normalized input and predicts its output
(site ``L3.MLP``). Tokens whose id is a special token (BOS, EOS, padding) are left out by default.
Activations go through a shuffling buffer of ``buffer_tokens`` tokens, which holds
buffer_tokens x (d_in + d_out) float32 numbers (``memory_bytes``); half of it is replaced by fresh
activations between passes, so consecutive batches mix many chunks. Chunks are reused in new orders
once exhausted. ``save_shards``/``from_shards`` keep activations on disk (safetensors shards) so
several dictionaries can train on one pass of the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from circuits.dictionary import DictionaryError
from interp.backends.base import RunSpec
from interp.components import Component, ComponentError, Site
from interp.model import Model
from interp.resume import layers_after_skipped
from interp.sublayers import Sublayers

SAE_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def _read(model: Model, tokens: torch.Tensor, sites: list[Site], mask: torch.Tensor | None = None) -> dict[Site, torch.Tensor]:
    """Activations at ``sites``; the layers after the last site are skipped and only one position
    is unembedded (the logits are not needed)."""
    layers = model.decoder_layers()
    with torch.no_grad(), layers_after_skipped(layers, max(site.layer for site in sites), model.layout.layer_returns_tuple):
        out = model.forward(RunSpec(tokens, reads=set(sites), logits_to_keep=1, attention_mask=mask))
    return {site: value.detach() for site, value in out.activations.items()}


def read_pairs(model: Model, site: str, kind: str, tokens: torch.Tensor, exclude_special: bool = True,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [n_tokens, d_in], targets [n_tokens, d_out]) of ``tokens`` [batch, pos] at ``site``:
    the site's activation twice for an SAE; (normalized MLP input, MLP output) for a transcoder.
    Under ``mask`` [batch, pos] (a padded batch: True = real token) padding is left out."""
    component = Component.parse(site).validate(model.config)
    if component.position is not None or component.index is not None:
        raise ComponentError(f"a dictionary reads a whole [batch, pos, d_model] site, not {site}")
    if kind == "sae":
        if component.kind not in SAE_KINDS:
            raise ComponentError(f"an SAE reads one of {', '.join(SAE_KINDS)}; {site} is {component.kind}")
        x = y = _read(model, tokens, [component.site], mask)[component.site]
    else:
        if component.kind != "mlp_out":
            raise ComponentError(f"a transcoder replaces an MLP: give its site as L<layer>.MLP, not {site}")
        layer = component.layer
        sites = [Site("resid_pre", layer), Site("attn_out", layer), Site("mlp_out", layer)]
        cache = _read(model, tokens, sites, mask)
        sublayers = Sublayers(model)
        resid = sublayers.mlp_input(layer, cache[sites[0]], cache[sites[1]])
        x, y = sublayers.mlp_normalized_input(layer, resid), cache[sites[2]]
    keep = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    if exclude_special:
        special = torch.tensor(sorted(set(model.tokenizer.all_special_ids)), device=tokens.device)
        keep = ~torch.isin(tokens, special)
    if mask is not None:
        keep = keep & mask.bool().to(keep.device)
    return x[keep].float().cpu(), y[keep].float().cpu()


class ActivationStore:
    """Shuffled batches of (x, y) pairs; iterate for an endless stream."""

    def __init__(self, model: Model, site: str, kind: str, chunks: torch.Tensor, *, batch_tokens: int = 4096,
                 buffer_tokens: int = 65536, forward_batch: int = 8, exclude_special: bool = True, seed: int = 0) -> None:
        if buffer_tokens < 2 * batch_tokens:
            raise DictionaryError(f"the buffer ({buffer_tokens} tokens) must hold at least two batches ({batch_tokens} tokens each)")
        self.model, self.site, self.kind, self.chunks = model, site, kind, chunks
        self.batch_tokens, self.buffer_tokens, self.forward_batch = batch_tokens, buffer_tokens, forward_batch
        self.exclude_special = exclude_special
        self.generator = torch.Generator().manual_seed(seed)
        x, y = read_pairs(model, site, kind, chunks[:1], exclude_special)
        self.d_in, self.d_out = x.shape[1], y.shape[1]
        self._order = torch.randperm(len(chunks), generator=self.generator)
        self._next = 0

    @property
    def memory_bytes(self) -> int:
        return self.buffer_tokens * (self.d_in + self.d_out) * 4

    def take(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n_tokens`` (x, y) pairs in chunk order (unshuffled), reading chunks as needed."""
        xs, ys, total = [], [], 0
        while total < n_tokens:
            if self._next >= len(self._order):
                self._order = torch.randperm(len(self.chunks), generator=self.generator)
                self._next = 0
            rows = self._order[self._next:self._next + self.forward_batch]
            self._next += len(rows)
            x, y = read_pairs(self.model, self.site, self.kind, self.chunks[rows].to(self.model.device), self.exclude_special)
            xs.append(x)
            ys.append(y)
            total += len(x)
        return torch.cat(xs)[:n_tokens], torch.cat(ys)[:n_tokens]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.take(self.buffer_tokens)
        half = self.buffer_tokens // 2
        while True:
            order = torch.randperm(self.buffer_tokens, generator=self.generator)
            x, y = x[order], y[order]
            for start in range(0, half - self.batch_tokens + 1, self.batch_tokens):
                yield x[start:start + self.batch_tokens], y[start:start + self.batch_tokens]
            new_x, new_y = self.take(half)
            x[:half], y[:half] = new_x, new_y

    def save_shards(self, folder: str | Path, n_tokens: int, shard_tokens: int = 65536) -> Path:
        """Write ``n_tokens`` (x, y) pairs as safetensors shards plus ``activations.json``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = 0
        shards = []
        while written < n_tokens:
            x, y = self.take(min(shard_tokens, n_tokens - written))
            name = f"shard-{len(shards):05d}.safetensors"
            save_file({"x": x.contiguous(), "y": y.contiguous()}, folder / name)
            shards.append(name)
            written += len(x)
        meta = {"site": self.site, "kind": self.kind, "model": self.model.config.name, "d_in": self.d_in,
                "d_out": self.d_out, "n_tokens": written, "shards": shards, "exclude_special": self.exclude_special}
        (folder / "activations.json").write_text(json.dumps(meta, indent=1))
        return folder


def batches_from_shards(folder: str | Path, batch_tokens: int, seed: int = 0) -> tuple[dict, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """(metadata, endless shuffled batches) from shards written by ``ActivationStore.save_shards``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / "activations.json").read_text())
        data = [load_file(folder / name) for name in meta["shards"]]
    except FileNotFoundError as exc:
        raise DictionaryError(f"{folder} holds no activation shards ({exc.filename} is missing)") from None
    except (json.JSONDecodeError, KeyError, OSError) as exc:
        raise DictionaryError(f"{folder} has unreadable activation shards ({type(exc).__name__}: {exc})") from None
    x = torch.cat([d["x"] for d in data])
    y = torch.cat([d["y"] for d in data])
    generator = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x) - batch_tokens + 1, batch_tokens):
                rows = order[start:start + batch_tokens]
                yield x[rows], y[rows]

    return meta, batches()
