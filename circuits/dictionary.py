"""Sparse dictionaries: SAEs and transcoders with ReLU+L1, TopK, BatchTopK and JumpReLU encoders.

Notation (docs/methods.md, sparse autoencoders): x [..., d_in], latents f [..., d_sae], W_enc [d_in, d_sae],
W_dec [d_sae, d_out]. An SAE reconstructs its input (d_out = d_in, b_dec subtracted from the input
first); a transcoder maps an MLP's normalized input to the MLP's output; a skip transcoder adds
x W_skip. Losses are per token, summed over output dimensions and averaged over tokens:

- relu:      ||y - y_hat||^2 + lambda(t) sum_i f_i ||W_dec,i||   (decoder-norm-weighted L1)
- topk:      ||y - y_hat||^2 + alpha AuxK   (k largest pre-activations kept, then ReLU)
- batchtopk: as topk, keeping the k * B largest over the batch; a running threshold (EMA of the
             smallest kept activation) makes inference a JumpReLU
- jumprelu:  ||y - y_hat||^2 + lambda(t) sum_i H(h_i - theta_i), straight-through gradients for theta
             with a rectangle kernel of bandwidth epsilon; theta parameterized directly

AuxK reconstructs the residual error y - y_hat (detached) from the ``aux_k`` largest pre-activations
among dead latents, decoded with W_dec alone (no b_dec), normalized by the error's own energy.
With ``normalize_target`` (the transcoder paper's choice) each token's squared error is divided by
||y||^2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")
KINDS = ("sae", "transcoder", "skip_transcoder")


ENCODER_INIT_SCALE = 0.5  # an SAE's encoder starts as this times its decoder's transpose


class DictionaryError(ValueError):
    """A dictionary configuration, input or weights file that cannot be used."""


@dataclass
class DictionaryConfig:
    """Everything that defines a dictionary and its loss (saved with the weights).

    ``site`` names what it reads in Component syntax (``L3.RESID_POST``; for transcoders the MLP,
    ``L3.MLP``). ``l1_coefficient`` is the relu sparsity weight, ``l0_coefficient`` the jumprelu
    one; both ramp up linearly over ``sparsity_warmup_steps``. ``dead_tokens``: a latent that has
    not fired for this many training tokens counts as dead for AuxK. The JumpReLU defaults suit the
    trainer's scaling of inputs to E||x||^2 = d_in (pre-activations of order 1).
    """

    d_in: int
    d_sae: int
    architecture: str = "topk"
    kind: str = "sae"
    d_out: int | None = None
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    sparsity_warmup_steps: int = 0
    aux_k: int | None = None
    aux_coefficient: float = 1.0 / 32
    dead_tokens: int = 100_000
    jumprelu_bandwidth: float = 0.2
    jumprelu_init_threshold: float = 0.3
    threshold_momentum: float = 0.99
    normalize_target: bool = False
    site: str = ""
    model_name: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in
        if self.aux_k is None:
            self.aux_k = max(1, self.d_in // 2)

    def validate(self) -> "DictionaryConfig":
        if self.architecture not in ARCHITECTURES:
            raise DictionaryError(f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}")
        if self.kind not in KINDS:
            raise DictionaryError(f"unknown dictionary kind {self.kind!r}; known: {', '.join(KINDS)}")
        for name in ("d_in", "d_sae", "d_out"):
            if getattr(self, name) < 1:
                raise DictionaryError(f"{name} must be positive, got {getattr(self, name)}")
        if self.kind == "sae" and self.d_out != self.d_in:
            raise DictionaryError(f"an SAE reconstructs its input: d_out {self.d_out} must equal d_in {self.d_in}")
        if self.architecture in ("topk", "batchtopk") and not 0 < self.k <= self.d_sae:
            raise DictionaryError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class _StepFunction(torch.autograd.Function):
    """H(h - theta) with a straight-through gradient for theta: -(1/eps) K((h - theta)/eps)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        return None, (-grad * kernel / eps).sum(dim=tuple(range(grad.dim() - 1))), None


class _JumpReLU(torch.autograd.Function):
    """h * H(h - theta); gradient to h on the kept entries, straight-through -(theta/eps) K to theta."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        grad_pre = grad * (pre > threshold).to(pre.dtype)
        grad_threshold = (-grad * threshold * kernel / eps).sum(dim=tuple(range(grad.dim() - 1)))
        return grad_pre, grad_threshold, None


class SparseDictionary(nn.Module):
    """One SAE or (skip) transcoder; ``forward(x)`` returns (reconstruction, latents)."""

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__()
        self.config = config.validate()
        c = config
        generator = torch.Generator().manual_seed(c.seed)
        decoder = torch.empty(c.d_sae, c.d_out).uniform_(-1, 1, generator=generator)
        decoder = decoder / decoder.norm(dim=1, keepdim=True) * (0.1 if c.architecture == "relu" else 1.0)
        self.W_dec = nn.Parameter(decoder)
        if c.kind == "sae":  # tied start, halved: higher held-out explained variance (benchmarks/dictionaries.py)
            encoder = decoder.T.clone() * ENCODER_INIT_SCALE
        else:
            encoder = torch.empty(c.d_in, c.d_sae).uniform_(-1, 1, generator=generator) / math.sqrt(c.d_in)
        self.W_enc = nn.Parameter(encoder)
        self.b_enc = nn.Parameter(torch.zeros(c.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(c.d_out))
        self.W_skip = nn.Parameter(torch.zeros(c.d_in, c.d_out)) if c.kind == "skip_transcoder" else None
        if c.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.full((c.d_sae,), c.jumprelu_init_threshold))
        elif c.architecture == "batchtopk":
            self.register_buffer("threshold", torch.full((c.d_sae,), -1.0))  # < 0: not estimated yet
        else:
            self.threshold = None
        self.register_buffer("tokens_since_fired", torch.zeros(c.d_sae, dtype=torch.long))

    # ---------------------------------------------------------------- forward pieces
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """h = (x - b_dec) W_enc + b_enc for SAEs, x W_enc + b_enc for transcoders: [..., d_sae]."""
        if x.shape[-1] != self.config.d_in:
            raise DictionaryError(f"input has {x.shape[-1]} features; this dictionary reads d_in={self.config.d_in}")
        centred = x - self.b_dec if self.config.kind == "sae" else x
        return centred @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Latents f from pre-activations [..., d_sae] (training-mode BatchTopK is batch-level)."""
        c = self.config
        if c.architecture == "relu":
            return torch.relu(pre)
        if c.architecture == "topk":
            return self._topk(pre, c.k)
        if c.architecture == "jumprelu":
            return _JumpReLU.apply(pre, self.threshold, c.jumprelu_bandwidth)
        if self.training:  # batchtopk
            flat = torch.relu(pre).reshape(-1, c.d_sae)
            kept = flat.flatten().topk(min(c.k * flat.shape[0], flat.numel())).indices
            mask = torch.zeros(flat.numel(), dtype=torch.bool, device=pre.device)
            mask[kept] = True
            return (flat * mask.view_as(flat)).view_as(pre)
        if (self.threshold < 0).all():
            return self._topk(pre, c.k)
        return pre * (pre > self.threshold.clamp_min(0)).to(pre.dtype)

    @staticmethod
    def _topk(pre: torch.Tensor, k: int) -> torch.Tensor:
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """f W_dec + b_dec (+ x W_skip for skip transcoders, which need ``x``)."""
        out = f @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise DictionaryError("a skip transcoder's decode needs the input x for its skip term")
            out = out + x @ self.W_skip
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f, x), f

    # ---------------------------------------------------------------- training
    def sparsity_scale(self, step: int) -> float:
        """Linear warm-up factor of the sparsity coefficient at ``step``."""
        warmup = self.config.sparsity_warmup_steps
        return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)

    def loss(self, x: torch.Tensor, target: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        """Losses on a batch of tokens x [n, d_in] -> target [n, d_out]; ``total`` is what to minimize.
        Updates the dead-latent counters and the BatchTopK threshold."""
        c = self.config
        pre = self.pre_activations(x)
        f = self.activate(pre)
        out = self.decode(f, x)
        error = (target - out).pow(2).sum(-1)
        if c.normalize_target:
            error = error / target.pow(2).sum(-1).clamp_min(1e-8)
        losses = {"mse": error.mean()}
        scale = self.sparsity_scale(step)
        if c.architecture == "relu":
            losses["sparsity"] = scale * c.l1_coefficient * (f * self.W_dec.norm(dim=1)).sum(-1).mean()
        elif c.architecture == "jumprelu":
            losses["sparsity"] = scale * c.l0_coefficient * _StepFunction.apply(pre, self.threshold, c.jumprelu_bandwidth).sum(-1).mean()
        else:
            losses["aux"] = c.aux_coefficient * self._aux_loss(pre, (target - out).detach())
        self._track(f.detach(), x.shape[0])
        losses["total"] = sum(losses.values())
        losses["l0"] = (f > 0).float().sum(-1).mean().detach()
        return losses

    def _aux_loss(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        dead = self.tokens_since_fired >= self.config.dead_tokens
        if not dead.any():
            return pre.new_zeros(())
        k = min(self.config.aux_k, int(dead.sum()))
        masked = pre.masked_fill(~dead, float("-inf"))
        values, indices = masked.topk(k, dim=-1)
        f_aux = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        reconstruction = f_aux @ self.W_dec  # no b_dec: the residual has none
        energy = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        return (residual - reconstruction).pow(2).sum(-1).mean() / energy

    @torch.no_grad()
    def _track(self, f: torch.Tensor, n_tokens: int) -> None:
        fired = (f > 0).any(0)
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0
        if self.config.architecture == "batchtopk" and self.training:
            positive = f[f > 0]
            if positive.numel():
                smallest = positive.min()
                current = self.threshold[0]
                momentum = self.config.threshold_momentum
                value = smallest if current < 0 else momentum * current + (1 - momentum) * smallest
                self.threshold.fill_(float(value))

    @torch.no_grad()
    def fold_scaling(self, scale_in: float, scale_out: float) -> None:
        """Make a dictionary trained on (x * scale_in -> y * scale_out) act on raw x and y."""
        if self.config.kind == "sae" and scale_in != scale_out:
            raise DictionaryError("an SAE's input and output share one scale")
        if self.config.kind == "sae":
            self.b_dec /= scale_in
        self.W_enc *= scale_in
        self.W_dec /= scale_out
        if self.config.kind != "sae":
            self.b_dec /= scale_out
        if self.W_skip is not None:
            self.W_skip *= scale_in / scale_out

    @torch.no_grad()
    def dead_fraction(self) -> float:
        return float((self.tokens_since_fired >= self.config.dead_tokens).float().mean())
