"""Each routed expert's output in a mixture-of-experts MLP, as a site.

``Site("expert", l)`` is ``[batch, pos, n_experts, d_model]``: expert e's contribution to layer l's
MLP output, weighted by its routing weight (zero where e is not among a token's top-k experts).
The routed experts' contributions sum to what the experts module returns; a shared expert
(Qwen-MoE) is part of the MLP output but no routed expert. Component names: ``L3.E5``.

Backends know nothing of these sites: :func:`expert_sites` runs a forward with plain PyTorch
hooks on each experts module (transformers 5 calls it as ``experts(hidden, top_k_index,
top_k_weights)``). The hook recomputes every expert's share with the module's own ``forward``,
its routing weights masked to that expert, checks that the shares add up to the module's output,
applies the run's edits and hands the module's output plus the edits' change on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import torch

from interp.architectures import get_path
from interp.backends.base import RunSpec, apply_edits
from interp.components import Site
from interp.hf_compat import unwrapped


class ExpertsError(RuntimeError):
    """The experts module did not behave as expert sites need."""


def _arguments(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    names = ("hidden_states", "top_k_index", "top_k_weights")
    values = list(args[:3]) + [kwargs.get(name) for name in names[len(args[:3]):]]
    if len(values) != 3 or any(not isinstance(v, torch.Tensor) for v in values):
        raise ExpertsError("the experts module was not called as experts(hidden, top_k_index, top_k_weights)")
    return values[0], values[1], values[2]


@contextmanager
def expert_sites(model, spec: RunSpec, reads: dict[Site, torch.Tensor]) -> Iterator[RunSpec]:
    """Within the block, a forward of the returned spec (``spec`` without its expert sites) also
    reads and edits them; what it reads lands in ``reads``."""
    sites = sorted(s for s in spec.sites if s.kind == "expert")
    if not sites:
        yield spec
        return
    layers = model.decoder_layers()
    n_experts = model.config.n_experts
    batch, length = spec.input_ids.shape
    handles = []

    for site in sites:
        module = unwrapped(get_path(layers[site.layer], model.layout.experts))

        def hook(module, args, kwargs, output, site=site):
            hidden, index, weights = _arguments(args, kwargs)
            shares = torch.stack([module.forward(hidden, index, weights * (index == e)) for e in range(n_experts)], dim=1)
            scale = output.detach().abs().max().clamp_min(1e-6)
            gap = (shares.detach().sum(1) - output.detach()).abs().max()
            if not gap <= 1e-4 * scale:
                raise ExpertsError(f"layer {site.layer}: the experts' shares add up to the module's output only within "
                                   f"{gap.item():.2e}; this experts module is not linear in its routing weights")
            shares = shares.view(batch, length, n_experts, -1)
            # a view of its own: the output gains (edited - shares), so an unedited read adds exactly
            # zero, the gradient at the read is the output's, and none flows twice into the inputs
            value = apply_edits(spec, site, shares.view_as(shares))
            if site in spec.reads:
                reads[site] = value
            if site not in spec.edits and not value.requires_grad:
                return None
            return output + (value - shares).sum(2).reshape(output.shape).to(output.dtype)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield replace(spec, edits={s: e for s, e in spec.edits.items() if s.kind != "expert"},
                      reads={s for s in spec.reads if s.kind != "expert"})
    finally:
        for handle in handles:
            handle.remove()
    missing = [s for s in sites if s in spec.reads and s not in reads]
    if missing:
        raise ExpertsError(f"the experts module of layer {missing[0].layer} never ran in this forward, so its expert "
                           "outputs could not be read")
