"""Backend over TransformerLens' ``TransformerBridge`` hook points.

The bridge wraps the Hugging Face modules in place, so calling the Hugging Face model fires the
bridge's hook points; we call it directly to keep Hugging Face's own ``logits_to_keep`` and KV-cache
arguments.
"""

from __future__ import annotations

import torch

from interp import hf_compat
from interp.backends.base import Backend, RunOutput, RunSpec, apply_edits
from interp.components import ACTIVATION_KINDS, Site

HOOK_NAMES = {kind: k.hook for kind, k in ACTIVATION_KINDS.items() if k.hook is not None}  # from the one kinds table


def hook_name(site: Site) -> str:
    """TransformerLens hook name of a site."""
    return HOOK_NAMES[site.kind].format(layer=site.layer)


class TransformerLensBackend(Backend):
    name = "transformer_lens"

    def __init__(self, hf_model: torch.nn.Module, tokenizer, model_dir: str, attention_modules: list[torch.nn.Module]) -> None:
        self.hf_model = hf_model
        self.bridge = hf_compat.boot_bridge(model_dir, hf_model, tokenizer, attention_modules)

    def forward(self, spec: RunSpec) -> RunOutput:
        activations: dict[Site, torch.Tensor] = {}

        def make_hook(site: Site):
            def hook(value: torch.Tensor, hook=None) -> torch.Tensor:
                value = apply_edits(spec, site, value)
                if site in spec.reads:
                    activations[site] = value
                return value

            return hook

        hooks = [(hook_name(site), make_hook(site)) for site in spec.sites]
        with self.bridge.hooks(fwd_hooks=hooks):
            out = self.hf_model(spec.input_ids, **self.model_kwargs(spec))
        return RunOutput(out.logits, activations, hf_compat.output_cache(out) if spec.return_cache else None)
