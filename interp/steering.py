"""Steering vectors: directions added to (or projected out of) an activation while the model runs
and generates.

A vector comes from

* two contrastive prompt sets (activation addition, contrastive activation addition): the mean of
  the site's activation over the positive set minus that over the negative set, each text reduced
  to the mean over its tokens (``reduce="mean"``) or to its last token (``"last"``);
* a linear probe's direction (a ``probe`` run folder, the probe of the site's residual stream);
* a dictionary latent's decoder row (``circuits.steering_analysis.feature_vector``): what the
  latent writes.

:func:`steering_edit` turns a vector and a coefficient into a ``model.patch`` value: ``add`` adds
``coefficient * vector`` (the vector as it is: a contrast keeps its own norm, a probe direction has
norm 1), ``project_out`` removes ``coefficient`` times the activation's component along the
vector (1 removes it all). Patched in with ``model.patch`` or ``model.generate(patches=...)``, it
acts at every position, the generated ones too, or at the one position a component names.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from interp.components import Component, ComponentError
from interp.model import Model, TokenizationError

DATA = Path(__file__).parent / "data" / "steering"
BUNDLED_SETS = {"sentiment-positive": "positive.txt", "sentiment-negative": "negative.txt",
                "steering-prompts": "prompts.txt"}
STEERABLE_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")  # [batch, pos, d_model] sites


class SteeringError(ValueError):
    """A steering input that cannot be used (a user error: one line)."""


def read_texts(source: str | Sequence[str], what: str) -> list[str]:
    """Texts of a bundled set (:data:`BUNDLED_SETS`), a ``.txt`` file (one per non-empty line), a
    ``.jsonl`` file (a ``text`` or ``prompt`` field per line), or a list of strings."""
    if not isinstance(source, str):
        texts = list(source)
    elif source in BUNDLED_SETS:
        texts = (DATA / BUNDLED_SETS[source]).read_text().splitlines()
    else:
        path = Path(source)
        if not path.is_file():
            raise SteeringError(f"{what} {source!r} is neither a bundled set ({', '.join(BUNDLED_SETS)}) nor a file")
        if path.suffix == ".jsonl":
            texts = []
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    texts.append(row["text"] if "text" in row else row["prompt"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SteeringError(f"{path}:{number}: expected a JSON object with a 'text' or 'prompt' field") from None
        else:
            texts = path.read_text().splitlines()
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise SteeringError(f"{what} {source!r} holds no text")
    return texts


def steering_site(model: Model, site: str | Component) -> Component:
    """The component a vector is added at: a whole ``[batch, pos, d_model]`` site (``L6.RESID_PRE``,
    ``L6.RESID_POST``, ``L6.ATTN``, ``L6.MLP``), optionally at one position (``@-1``)."""
    try:
        component = model.validate(site)
    except ComponentError as exc:
        raise SteeringError(str(exc)) from None
    if component.kind not in STEERABLE_KINDS or component.index is not None or isinstance(component.position, str):
        raise SteeringError(f"cannot steer at {component}: a vector is added to a residual stream, attention output or "
                            "MLP output (e.g. L6.RESID_PRE, L6.MLP), at every position or at @<number>")
    return component


@torch.no_grad()
def contrast_vector(model: Model, positive: Sequence[str], negative: Sequence[str], site: str | Component,
                    reduce: str = "mean") -> torch.Tensor:
    """Mean activation [d_model] (float32) at ``site`` over ``positive`` minus that over
    ``negative``; each text is reduced to the mean over its tokens or to its last token."""
    if reduce not in ("mean", "last"):
        raise SteeringError(f"reduce must be 'mean' or 'last', got {reduce!r}")
    component = steering_site(model, site)
    whole = Component(component.kind, component.layer)
    means = []
    for name, texts in (("positive", positive), ("negative", negative)):
        try:
            tokens = model.tokenize(list(texts))
        except TokenizationError as exc:
            raise SteeringError(f"the {name} steering set cannot be tokenized: {exc}") from None
        _, cache = model.run_with_cache(tokens, [whole])
        activation = cache[whole].float()  # [batch, pos, d_model], left-padded
        if reduce == "last":
            per_text = activation[:, -1]
        else:
            mask = (tokens.mask if tokens.mask is not None else torch.ones(tokens.ids.shape, dtype=torch.bool))
            mask = mask.to(activation.device)[..., None].float()
            per_text = (activation * mask).sum(1) / mask.sum(1)
        means.append(per_text.mean(0))
    return means[0] - means[1]


def probe_vector(model: Model, folder: str | Path, site: str | Component) -> torch.Tensor:
    """The unit direction [d_model] of the probe (a ``probe`` run folder of this model) that reads
    the residual stream at ``site`` (``L<l>.RESID_POST`` uses layer l's probe, ``L<l>.RESID_PRE``
    layer l-1's)."""
    from interp.results import Result, ResultError

    component = steering_site(model, site)
    try:
        result = Result.load(folder)
    except ResultError as exc:
        raise SteeringError(str(exc)) from None
    if result.method != "probe" or "directions" not in result.arrays:
        raise SteeringError(f"{folder} is a {result.method!r} run, not a probe run with directions")
    if result.model != model.config.name:
        raise SteeringError(f"the probes of {folder} were trained on {result.model!r}, not {model.config.name!r}")
    layer = {"resid_post": component.layer, "resid_pre": component.layer - 1}.get(component.kind)
    if layer is None or layer < 0:
        raise SteeringError(f"probes read L<l>.RESID_POST (= L<l+1>.RESID_PRE); no probe reads {component}")
    direction = torch.as_tensor(result.arrays["directions"][layer], dtype=torch.float32)
    if not torch.isfinite(direction).all() or direction.norm() == 0:
        raise SteeringError(f"the layer-{layer} probe of {folder} has no direction (only a binary probe has one)")
    return direction


def check_coefficient(coefficient: float) -> float:
    """``coefficient`` as a float; one line if it is not a finite number."""
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not math.isfinite(coefficient):
        raise SteeringError(f"a steering coefficient must be a finite number, got {coefficient!r}")
    return float(coefficient)


def steering_edit(vector: torch.Tensor, coefficient: float, mode: str = "add"):
    """A ``model.patch`` value of an activation [..., d_model]: ``x + coefficient * vector``
    (``add``) or ``x - coefficient * (x . u) u`` with ``u`` the unit vector (``project_out``)."""
    coefficient = check_coefficient(coefficient)
    if mode not in ("add", "project_out"):
        raise SteeringError(f"mode must be 'add' or 'project_out', got {mode!r}")
    if vector.dim() != 1 or not torch.isfinite(vector).all():
        raise SteeringError(f"a steering vector must be one finite row, got shape {tuple(vector.shape)}")
    if mode == "add":
        def edit(activation: torch.Tensor) -> torch.Tensor:
            return activation + coefficient * vector.to(activation.device, activation.dtype)
    else:
        unit = vector / vector.norm().clamp_min(1e-12)

        def edit(activation: torch.Tensor) -> torch.Tensor:
            u = unit.to(activation.device, activation.dtype)
            return activation - coefficient * (activation @ u)[..., None] * u
    return edit
