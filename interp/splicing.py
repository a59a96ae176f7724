"""Dictionaries spliced into a model: their latents and error terms become sites like any other.

A :class:`Splice` replaces one activation (its *host*: an SAE's site, or a transcoder's MLP
output) by ``decode(f)`` with ``f = encode(inputs)``, optionally plus the error term
``original - decode(encode(inputs))``, so that the model's output is unchanged while the latents
stay readable. While a splice is active (``Model.spliced``), two virtual sites exist:

    L3.TC.1234 / L3.SAE.1234   latent 1234 of the transcoder / SAE at layer 3  [batch, pos, d_sae]
    L3.TC_ERR / L3.SAE_ERR     its error term                                  [batch, pos, d_out]

Reads, edits and gradients at them work as at any other site, so exact patching, AtP and
``model.patch`` run on features. An edit of the latents changes the output by
``decode(f_edited) - decode(f)``; the error term is computed from the unedited latents, so it
stays what the model's own activation left unexplained.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from interp.backends.base import Edit, RunSpec, apply_edits
from interp.components import FEATURE_KINDS, GRANULARITIES, Component, ComponentError, Site

# finish(original activation, dictionary input) -> the host's new activation
Finish = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Splice:
    """One dictionary in the forward pass.

    ``encode`` maps the dictionary's input [..., d_in] to latents [..., width]; ``decode(f, x)``
    maps latents (and the input, for a skip term) to the host's activation [..., d_out];
    ``host_edits(finish)`` gives the edits that make the host's activation
    ``finish(original, input)`` (for an SAE the input is the host's own activation).
    """

    site: Site  # Site("tc" | "sae", layer): the latents
    host: Site  # the activation the dictionary replaces
    width: int
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    host_edits: Callable[[Finish], dict[Site, Edit]]
    error_term: bool = True

    def __post_init__(self) -> None:
        if self.site.kind not in FEATURE_KINDS:
            raise ValueError(f"a splice's latents are a {' or '.join(FEATURE_KINDS)} site, not {self.site.kind!r}")

    @property
    def error_site(self) -> Site:
        return Site(f"{self.site.kind}_error", self.site.layer)

    @property
    def sites(self) -> tuple[Site, Site]:
        return self.site, self.error_site

    def finish(self, spec: RunSpec, reads: dict[Site, torch.Tensor]) -> Finish:
        """The host's replacement within one run of ``spec``: applies the run's edits at the
        latents and error term and stores what it reads in ``reads``."""

        def finish(original: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
            x = inputs.float()
            latents = self.encode(x)
            # a view of its own, so that a gradient read at the latents is the one through the
            # decoder only (the error term, which also depends on them, is held fixed)
            edited = apply_edits(spec, self.site, latents.view_as(latents))
            out = self.decode(edited, x)
            if self.error_term:
                same = self.site not in spec.edits and not out.requires_grad
                unedited = out if same else self.decode(latents, x)
                error = apply_edits(spec, self.error_site, original.float() - unedited)
                out = out + error
                if self.error_site in spec.reads:
                    reads[self.error_site] = error
            if self.site in spec.reads:
                reads[self.site] = edited
            return out.to(original.dtype)

        return finish


def with_splices(spec: RunSpec, splices: list[Splice], reads: dict[Site, torch.Tensor]) -> RunSpec:
    """``spec`` for the backend: edits and reads at the splices' virtual sites move into edits
    of their hosts (applied before any other edit there); ``reads`` collects the virtual reads."""
    virtual = {site for splice in splices for site in splice.sites}
    edits: dict[Site, list[Edit]] = {}
    for splice in splices:
        for site, edit in splice.host_edits(splice.finish(spec, reads)).items():
            edits.setdefault(site, []).append(edit)
    for site, site_edits in spec.edits.items():
        if site not in virtual:
            edits.setdefault(site, []).extend(site_edits)
    return replace(spec, edits=edits, reads={site for site in spec.reads if site not in virtual})


def feature_components(splices: list[Splice], granularity: str, positions: "int | list[int | str]",
                       layers: list[int] | None = None) -> tuple[list[Component], list[int], list[str]]:
    """(components, shape, axes) of the ``features`` / ``features_pos`` granularities: every latent
    of every spliced dictionary (at ``layers``, if given), by dictionary x latent (x position;
    ``positions``: a count or a frame's positions)."""
    chosen = [s for s in splices if layers is None or s.site.layer in layers]
    if not chosen:
        raise ComponentError(f"granularity {granularity!r} patches the latents of spliced dictionaries, and none is "
                             "spliced in" + ("" if layers is None else f" at layers {layers}") + " (interp patch --dictionary PATH)")
    widths = {s.width for s in chosen}
    if len(widths) > 1:
        raise ComponentError(f"granularity {granularity!r} needs dictionaries of one width, got {sorted(widths)}; "
                             "list the latents as components instead")
    width = widths.pop()
    if granularity == "features":
        found = [Component(s.site.kind, s.site.layer, i) for s in chosen for i in range(width)]
        return found, [len(chosen), width], GRANULARITIES[granularity].axes
    slots = range(positions) if isinstance(positions, int) else list(positions)
    found = [Component(s.site.kind, s.site.layer, i, p) for s in chosen for i in range(width) for p in slots]
    return found, [len(chosen), width, len(slots)], GRANULARITIES[granularity].axes
