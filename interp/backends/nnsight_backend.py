"""Backend over nnsight's ``LanguageModel`` (locally, or remotely on NDIF with ``remote=True``).

Remote execution needs an NDIF API key: ``nnsight.CONFIG.set_default_api_key("...")`` once, or
the ``NDIF_API_KEY`` environment variable. Only models hosted by NDIF can run remotely.
"""

from __future__ import annotations

import torch

from interp.architectures import Layout
from interp.backends.base import Backend, RunOutput, RunSpec
from interp.backends.nnsight_trace import run_trace
from interp.config import ModelConfig


class NNsightBackend(Backend):
    name = "nnsight"

    def __init__(self, hf_model: torch.nn.Module, tokenizer, config: ModelConfig, layout: Layout, remote: bool = False,
                 lm=None) -> None:
        """``lm``: nnsight's model built from a hub id (what NDIF needs to name the model);
        None: one built around ``hf_model``."""
        from nnsight import LanguageModel

        self.hf_model = hf_model
        self.config = config
        self.layout = layout
        self.remote = remote
        self.lm = LanguageModel(hf_model, tokenizer=tokenizer) if lm is None else lm

    def forward(self, spec: RunSpec) -> RunOutput:
        for site, edits in spec.edits.items():
            if site.kind == "pattern" and edits:
                raise NotImplementedError(
                    "editing attention patterns is not supported on the nnsight backend; use backend='transformer_lens'"
                )
        if any(site.kind == "resid_mid" for site in spec.sites):
            raise NotImplementedError("resid_mid is not exposed on the nnsight backend; use backend='transformer_lens'")
        c = self.config
        logits, activations, cache = run_trace(
            self.lm, self.layout, c.n_heads, c.n_kv_heads, c.d_head, spec, self.model_kwargs(spec), self.remote
        )
        return RunOutput(logits, activations, cache)
