"""The tuned lens: one affine translator per stage of the residual stream, learned so that the
translated stage, decoded as the model decodes its last residual stream, predicts what the model
finally predicts.

Stage ``i``'s translator maps a residual vector h [d_model] to ``[h, 1] @ weight[i]``
(weight [n_stages, d_model + 1, d_model]); the last stage's is the identity (it *is* what the
final norm reads). :func:`fit_tuned_lens` fits them on a corpus in two steps:

1. Least squares (closed form, ridge-regularized): each stage's translator regresses the final
   residual, scaled to unit root-mean-square per token, on the stage's residual. The final norm
   divides by its input's own scale, so only the direction of the prediction matters, and the
   unit-RMS target keeps the few very large dimensions of some models from dominating the fit.
2. Optionally (``steps`` > 0), Adam on the sum over stages of KL(P_final || P_stage), the tuned
   lens's own objective (Belrose et al. 2023), from the least-squares start. A stage keeps the
   refined translator only if its KL on a validation slice of the training text went down.

:meth:`TunedLens.save` writes ``lens.safetensors`` and ``lens.json`` (the model's name, sizes and
stages, checked by :meth:`TunedLens.load`, and the held-out KL per stage of the logit and the
tuned lens, measured on text the fit never saw).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp.lens import stages, unembed
from interp.metrics import kl_divergence
from interp.model import Model

FORMAT = "interp-tuned-lens"
WEIGHTS_FILE, INFO_FILE = "lens.safetensors", "lens.json"


class LensFileError(ValueError):
    """A tuned-lens folder that is missing, unreadable or made for another model (one line)."""


@dataclass
class TunedLens:
    """Translators for ``stages`` of ``model`` (see module doc); ``report`` holds what the fit
    measured (held-out KL per stage, token counts, settings)."""

    model: str
    stages: list[str]
    weight: torch.Tensor  # [n_stages, d_model + 1, d_model]
    d_vocab: int
    report: dict = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return self.weight.shape[-1]

    def translate(self, stage: int, residual: torch.Tensor) -> torch.Tensor:
        """Stage ``stage``'s translation of residual vectors [..., d_model] (float32)."""
        w = self.weight[stage].to(residual.device)
        return residual.float() @ w[:-1] + w[-1]

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous()}, str(folder / WEIGHTS_FILE))
        info = {"format": FORMAT, "model": self.model, "stages": self.stages, "d_model": self.d_model,
                "d_vocab": self.d_vocab, "report": self.report}
        (folder / INFO_FILE).write_text(json.dumps(info, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: Model) -> "TunedLens":
        """The lens in ``folder`` (or in its ``tuned-lens`` subfolder, as ``interp tuned-lens``
        writes it), checked to be made for ``model``: its name, d_model, vocabulary and stages."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / INFO_FILE).is_file() and (folder / "tuned-lens" / INFO_FILE).is_file():
            folder = folder / "tuned-lens"
        try:
            info = json.loads((folder / INFO_FILE).read_text())
            weight = load_file(str(folder / WEIGHTS_FILE))["weight"]
        except FileNotFoundError as exc:
            raise LensFileError(f"{folder} is not a tuned-lens folder ({Path(exc.filename).name} is missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LensFileError(f"{folder / INFO_FILE} is not valid JSON ({exc})") from None
        except Exception as exc:  # safetensors' own errors, a missing tensor
            raise LensFileError(f"{folder / WEIGHTS_FILE} is unreadable ({type(exc).__name__}: {exc})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise LensFileError(f"{folder / INFO_FILE} was not written by interp's tuned lens")
        c = model.config
        expected = (len(stages(model)), c.d_model + 1, c.d_model)
        if info.get("model") != c.name:
            raise LensFileError(f"the tuned lens in {folder} was trained for {info.get('model')!r}, not {c.name!r}")
        if tuple(weight.shape) != expected or info.get("d_vocab") != c.d_vocab or info.get("stages") != stages(model):
            raise LensFileError(f"the tuned lens in {folder} has translators of shape {tuple(weight.shape)} for "
                                f"vocabulary {info.get('d_vocab')}; {c.name} needs {expected} and {c.d_vocab}")
        return cls(info["model"], info["stages"], weight.float(), info["d_vocab"], info.get("report", {}))


@torch.no_grad()
def residuals(model: Model, tokens: torch.Tensor, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """Every stage's residual stream [n_stages, tokens, d_model] (float32) of token rows [n, pos]."""
    from tqdm.auto import tqdm

    names = stages(model)
    parts = []
    for start in tqdm(range(0, len(tokens), batch_size), desc="residual streams", disable=not progress, leave=False):
        _, cache = model.run_with_cache(tokens[start:start + batch_size].to(model.device), names)
        parts.append(torch.stack([cache[name].float().reshape(-1, model.config.d_model).cpu() for name in names]))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def kl_per_stage(model: Model, hidden: torch.Tensor, lens: TunedLens | None = None, batch_tokens: int = 256) -> list[float]:
    """Mean KL(P_final || P_stage) in nats per token of every stage of ``hidden``
    [n_stages, tokens, d_model], decoded by the logit lens (``lens`` None) or the tuned lens."""
    totals = [0.0] * hidden.shape[0]
    for start in range(0, hidden.shape[1], batch_tokens):
        chunk = hidden[:, start:start + batch_tokens].to(model.device)
        final = unembed(model, chunk[-1]).log_softmax(-1)
        for i in range(hidden.shape[0]):
            h = chunk[i] if lens is None else lens.translate(i, chunk[i])
            predicted = unembed(model, h).log_softmax(-1)
            totals[i] += float(kl_divergence(final, predicted).sum())
    return [t / hidden.shape[1] for t in totals]


def _least_squares(hidden: torch.Tensor, ridge: float) -> torch.Tensor:
    """Translators [n_stages, d + 1, d] regressing the unit-RMS final residual on each stage."""
    target = hidden[-1] / hidden[-1].pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    n, d = hidden.shape[1], hidden.shape[-1]
    weights = []
    for i in range(hidden.shape[0] - 1):
        x = torch.cat([hidden[i], torch.ones(n, 1)], dim=1).double()
        gram = x.T @ x
        gram += ridge * gram.diagonal().mean() * torch.eye(d + 1, dtype=torch.float64)
        weights.append(torch.linalg.solve(gram, x.T @ target.double()).float())
    identity = torch.cat([torch.eye(d), torch.zeros(1, d)])
    return torch.stack(weights + [identity])


def _refine(model: Model, lens: TunedLens, train: torch.Tensor, valid: torch.Tensor, steps: int, lr: float,
            batch_tokens: int, seed: int, progress: bool) -> None:
    """Adam on the summed KL from the least-squares start; each stage keeps its refined translator
    only where its KL on ``valid`` went down."""
    from tqdm.auto import tqdm

    before = kl_per_stage(model, valid, lens)
    start = lens.weight.clone()
    weight = lens.weight[:-1].clone().requires_grad_()
    optimizer = torch.optim.Adam([weight], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="tuned lens (KL)", disable=not progress, leave=False):
        rows = torch.randint(0, train.shape[1], (batch_tokens,), generator=generator)
        batch = train[:, rows].to(model.device)
        with torch.no_grad():
            final = unembed(model, batch[-1]).log_softmax(-1)
        loss = 0.0
        for i in range(weight.shape[0]):
            w = weight[i].to(model.device)
            predicted = unembed(model, batch[i] @ w[:-1] + w[-1]).log_softmax(-1)
            loss = loss + kl_divergence(final, predicted).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lens.weight = torch.cat([weight.detach(), start[-1:]])
    after = kl_per_stage(model, valid, lens)
    kept = [a < b for a, b in zip(after, before)]
    lens.weight = torch.stack([lens.weight[i] if kept[i] else start[i] for i in range(len(kept))])
    lens.report["refined_stages"] = [name for name, k in zip(lens.stages, kept[:-1]) if k]


def fit_tuned_lens(model: Model, train_tokens: torch.Tensor, held_out_tokens: torch.Tensor, *, ridge: float = 1e-3,
                   steps: int = 0, lr: float = 1e-4, batch_tokens: int = 128, seed: int = 0,
                   progress: bool = False) -> TunedLens:
    """Fit the translators on ``train_tokens`` [n, pos] (see module doc) and report the logit and
    tuned lens's KL per stage on ``held_out_tokens``."""
    names = stages(model)
    hidden = residuals(model, train_tokens, progress=progress)
    valid_rows = max(1, hidden.shape[1] // 5) if steps else 0
    fit_part = hidden[:, valid_rows:]
    lens = TunedLens(model.config.name, names, _least_squares(fit_part, ridge), model.config.d_vocab,
                     {"ridge": ridge, "steps": steps, "lr": lr, "train_tokens": int(fit_part.shape[1])})
    if steps:
        _refine(model, lens, fit_part, hidden[:, :valid_rows], steps, lr, batch_tokens, seed, progress)
    held_out = residuals(model, held_out_tokens, progress=progress)
    lens.report.update({"held_out_tokens": int(held_out.shape[1]),
                        "kl_logit_lens": kl_per_stage(model, held_out), "kl_tuned_lens": kl_per_stage(model, held_out, lens)})
    return lens
