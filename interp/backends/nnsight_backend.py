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
        if self.remote and spec.keep_grad:
            raise NotImplementedError("gradients (AtP, AtP*, EAP, probes' attributions, steering vectors from gradients) "
                                      "are not taken through NDIF here: run them on a local copy of the model")
        if any(site.kind == "resid_mid" for site in spec.sites):
            raise NotImplementedError("resid_mid is not exposed on the nnsight backend; use backend='transformer_lens'")
        c = self.config
        try:
            logits, activations, cache = run_trace(
                self.lm, self.layout, c.n_heads, c.n_kv_heads, c.d_head, spec, self.model_kwargs(spec), self.remote
            )
        except Exception as exc:
            if not self.remote:
                raise
            # the network, the hub and NDIF raise many kinds; the cause stays chained for a debugger
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            raise RemoteRunError(f"the request to NDIF failed: {type(exc).__name__}: {reason[:300]}") from exc
        return RunOutput(logits, activations, cache)


class RemoteRunError(ValueError):
    """A forward sent to NDIF that did not come back (network, NDIF, the hub): not a bug in interp,
    so the command line says it in one line, as it does a bad input."""
