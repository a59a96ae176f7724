"""The steering analysis (``interp steer``): a vector added at one site (or one at each of
several) for a sweep of coefficients, and what it does to generated text, to a task's logit difference and to the
distribution on neutral text.

Each coefficient is one row: the model runs with ``coefficient * vector`` added at the site
(``--mode project_out``: the vector's component scaled away) plus the fixed interventions
(``--ablate`` components zeroed, ``--clamp`` latents of a spliced ``--dictionary`` held at a
value), and

* generates ``new_tokens`` tokens after each of the steering prompts (greedy unless
  ``--do-sample``), next to the text the plain model generates;
* measures the task's logit difference (answer minus wrong answer at each prompt's last token):
  ``scores`` are its change from the plain model, averaged over the task's prompts;
* measures the side effect, the KL divergence from the plain model's next-token distribution to
  the steered one on neutral text (a corpus), in nats per token (``kl_neutral``).

The vector comes from contrastive prompt sets (the default: the bundled sentiment sets, so the
default task is ``sentiment``), a probe run (:mod:`interp.steering`) or a dictionary latent's decoder
row (:func:`feature_vector`).
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from circuits.dictionary import DictionaryError
from circuits.dictionary_io import load_dictionary
from circuits.dictionary_evaluation import spliced
from interp.analysis import Analysis, Config, ConfigError, Printed, note, option, register
from interp.components import Component
from interp.metrics import kl_divergence, measure
from interp.model import Model
from interp.results import Result
from interp.steering import SteeringError, contrast_vector, probe_vector, read_texts, steering_edit, steering_site
from interp.tasks import Task


@dataclass(frozen=True)
class SteerConfig(Config):
    """``interp steer``: a steering vector at one site or several, swept over coefficients."""

    vector: str = option("contrast", "contrast (mean activation over --positive minus over --negative) | "
                                     "probe:<probe run folder> | feature:<dictionary folder>:<latent> (its decoder "
                                     "row) | none (only --ablate / --clamp)")
    site: str | None = option(None, "where the vector is added: L<l>.RESID_PRE, .RESID_POST, .ATTN or .MLP, "
                                    "optionally @<position> (default: a third of the way up, L<n/3>.RESID_PRE; a "
                                    "feature: its dictionary's site); several, comma-separated: a vector at each "
                                    "(contrast and probe vectors computed there, a feature's row added at each), "
                                    "all scaled by the same coefficient")
    positive: str = option("sentiment-positive", "positive prompt set: a bundled set, a .txt file (a text per line) or "
                                                 ".jsonl (text or prompt fields)")
    negative: str = option("sentiment-negative", "negative prompt set (as --positive)")
    reduce: Literal["mean", "last"] = option("mean", "each contrast text's activation: the mean over its tokens, or "
                                                     "its last token")
    mode: Literal["add", "project_out"] = option("add", "add: coefficient x vector added; project_out: coefficient "
                                                        "x the activation's component along the vector removed")
    coefficients: tuple[float, ...] = option((-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0), "coefficients swept, "
                                             "comma-separated (--coefficients=-4,0,4 when the first is negative)")
    prompts: str = option("steering-prompts", "prompts to generate from: a bundled set or a file (as --positive)")
    new_tokens: int = option(20, "tokens generated after each prompt", minimum=1, maximum=512, quick=4)
    do_sample: bool = option(False, "sample (seeded by --seed) instead of greedy decoding")
    temperature: float = option(1.0, "sampling temperature", minimum=1e-3)
    seed: int = option(0, "seed of the task's prompts, the neutral text and sampling")
    neutral: str = option("python-docs", "neutral text for the KL side effect: a corpus name, file or folder")
    neutral_chunks: int = option(8, "neutral windows measured", minimum=1, quick=2)
    neutral_length: int = option(64, "tokens per neutral window", minimum=2)
    ablate: tuple[str, ...] | None = option(None, "components zeroed in every steered row, comma-separated "
                                                  "(L5.H3,L6.MLP)")
    dictionary: str | None = option(None, "a dictionary folder spliced in (with its error term) for --clamp")
    clamp: tuple[str, ...] | None = option(None, "latents held at a value in every steered row: L3.SAE.12=8 "
                                                 "(needs --dictionary)")
    progress: bool = option(True, "show progress lines")

    def validate(self) -> None:
        bad = next((c for c in self.coefficients if not math.isfinite(c)), None)
        if bad is not None:
            raise ConfigError(f"--coefficients must be finite numbers, got {bad}")
        if not self.coefficients:
            raise ConfigError("--coefficients needs at least one value")
        if self.clamp and not self.dictionary:
            raise ConfigError("--clamp holds latents of a spliced dictionary: give its folder with --dictionary")
        if self.vector == "none" and not (self.ablate or self.clamp):
            raise ConfigError("--vector none steers with --ablate or --clamp only; give one of them")
        kind = self.vector.partition(":")[0]
        if kind not in ("contrast", "probe", "feature", "none"):
            raise ConfigError(f"--vector must be contrast, probe:<folder>, feature:<folder>:<latent> or none; "
                              f"got {self.vector!r}")
        if kind == "feature" and not self.vector.rpartition(":")[2].isdigit():
            raise ConfigError(f"--vector feature:<folder>:<latent> needs a latent number; got {self.vector!r}")

    def clamps(self) -> dict[str, float]:
        """``--clamp`` as {component: value}."""
        out = {}
        for item in self.clamp or ():
            name, equals, value = item.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not equals or not math.isfinite(number):
                raise ConfigError(f"--clamp takes component=value with a finite value, e.g. L3.SAE.12=8; got {item!r}")
            out[name.strip()] = number
        return out


@dataclass
class SteerPayload:
    """``steered[row][prompt]``: the text generated in each row (coefficient) after each prompt;
    ``unsteered[prompt]``: the plain model's; ``baseline_logit_diff``: the task's mean logit
    difference on the plain model; ``vector_norm`` and ``site_norm``: the vector's norm and the
    site activation's mean norm on the task's prompts (how big a coefficient of 1 is), at the
    first site; ``sites``, ``vector_norms`` and ``site_norms``: the same at every site."""

    prompts: list
    unsteered: list
    steered: list
    baseline_logit_diff: float
    vector_norm: float
    site_norm: float
    sites: list | None = None
    vector_norms: list | None = None
    site_norms: list | None = None


def _vectors(model: Model, config: SteerConfig) -> list[tuple[torch.Tensor | None, Component | None]]:
    """(the steering vector, the component it is added at) for each site of the config; one line
    when a site repeats."""
    sites = [site.strip() for site in config.site.split(",")] if config.site else [None]
    named = [str(steering_site(model, site)) for site in sites if site is not None]  # before any vector is computed
    repeated = next((name for name in named if named.count(name) > 1), None)
    if repeated is not None:
        raise SteeringError(f"--site names {repeated} twice; each site gets one vector")
    found = [_vector(model, config, site) for site in sites]
    return [(vector, steering_site(model, site) if site is not None else None) for vector, site in found]


def _vector(model: Model, config: SteerConfig, site: str | None) -> tuple[torch.Tensor | None, str | None]:
    """(the steering vector, the site it is added at) of the config at ``site`` (None: the default)."""
    kind, _, rest = config.vector.partition(":")
    default_site = f"L{model.config.n_layers // 3}.RESID_PRE"
    if kind == "none":
        return None, site
    if kind == "feature":
        folder, _, latent = rest.rpartition(":")
        vector, own = feature_vector(model, folder, int(latent))
        return vector, site or own
    site = site or default_site
    if kind == "probe":
        return probe_vector(model, rest, site), site
    return contrast_vector(model, read_texts(config.positive, "--positive"), read_texts(config.negative, "--negative"),
                           site, config.reduce), site


def feature_vector(model: Model, folder: str | Path, latent: int) -> tuple[torch.Tensor, str]:
    """(decoder row [d_model] of ``latent``, the site the dictionary writes: an SAE's own site, a
    transcoder's MLP output) of a dictionary folder trained on this model."""
    try:
        dictionary = load_dictionary(folder)
    except DictionaryError as exc:
        raise SteeringError(str(exc)) from None
    config = dictionary.config
    if config.model_name and config.model_name != model.config.name:
        raise SteeringError(f"the dictionary in {folder} was trained on {config.model_name!r}, not {model.config.name!r}")
    if config.d_out != model.config.d_model:
        raise SteeringError(f"the dictionary in {folder} writes {config.d_out} dimensions; {model.config.name} has "
                            f"d_model {model.config.d_model}")
    if not 0 <= latent < config.d_sae:
        raise SteeringError(f"latent {latent} is out of range: the dictionary in {folder} has {config.d_sae} latents")
    return dictionary.W_dec[latent].detach().float().clone(), config.site


@torch.no_grad()
def _kl_neutral(model: Model, tokens: torch.Tensor, plain: torch.Tensor) -> float:
    """Mean KL(plain || this run) per token in nats on ``tokens`` (plain log-probabilities given)."""
    steered = model.run(tokens).float().log_softmax(-1)
    return float(kl_divergence(plain, steered).mean())


@torch.no_grad()
def run_steering(model: Model, task: Task, config: SteerConfig = SteerConfig()) -> Result:
    """The coefficient sweep (see module doc)."""
    from interp.corpus import load_corpus

    start = time.perf_counter()
    if task.multi_token or not task.wrong_ids:
        raise ConfigError(f"steering measures a logit difference of single-token answers; task {task.name!r} has "
                          "answers of several tokens or no wrong answer")
    steering = _vectors(model, config)
    vector = steering[0][0]
    prompts = read_texts(config.prompts, "--prompts")
    neutral = load_corpus(config.neutral).token_chunks(model.tokenizer, config.neutral_length, config.neutral_chunks,
                                                        config.seed).to(model.device)
    options = {"do_sample": config.do_sample, "temperature": config.temperature, "seed": config.seed}
    fixed = {name: torch.zeros(()) for name in config.ablate or ()}
    with ExitStack() as stack:
        if config.dictionary:
            stack.enter_context(spliced(model, load_dictionary(config.dictionary), error_term=True))
        fixed.update({name: torch.tensor(value) for name, value in config.clamps().items()})
        for name in fixed:
            model.validate(name)
        note(config.progress, f"steer: plain model on {len(prompts)} prompts, {len(task.prompt_ids)} task prompts")
        plain_text = model.generate_text(prompts, config.new_tokens, **options)
        baseline = measure(model, task).float()
        plain_neutral = model.run(neutral).float().log_softmax(-1)
        site_norms = [math.nan] * len(steering)
        sites = [component.site for _, component in steering if component is not None]
        if sites:
            _, cache = model.run_with_cache(task.clean_tokens, sites, attention_mask=task.attention_mask)
            for i, (_, component) in enumerate(steering):
                activation = cache[component.site].float()
                mask = (task.attention_mask if task.attention_mask is not None
                        else torch.ones(activation.shape[:2], dtype=torch.bool))
                site_norms[i] = float(activation.norm(dim=-1)[mask.to(activation.device)].mean())
        coefficients = config.coefficients if vector is not None else (1.0,)
        rows = {"logit_diff": [], "kl_neutral": [], "per_prompt": []}
        steered = []
        for k, coefficient in enumerate(coefficients):
            patches = dict(fixed)
            for site_vector, component in steering:
                if site_vector is not None:
                    patches[str(component)] = steering_edit(site_vector.to(model.device), coefficient, config.mode)
            note(config.progress, f"steer: row {k + 1}/{len(coefficients)} (coefficient {coefficient:g})")
            with model.patch(patches):
                steered.append(model.generate_text(prompts, config.new_tokens, **options))
                per_prompt = measure(model, task).float() - baseline
                rows["kl_neutral"].append(_kl_neutral(model, neutral, plain_neutral))
            rows["per_prompt"].append(per_prompt.cpu().numpy())
            rows["logit_diff"].append(float(per_prompt.mean() + baseline.mean()))
    labels = [f"{c:+g}" if vector is not None else "fixed" for c in coefficients]
    norms = [float(v.norm()) if v is not None else math.nan for v, _ in steering]
    scores = np.array([float(p.mean()) for p in rows["per_prompt"]])
    return Result(
        method="steering", analysis="steer", model=model.config.name, task=task.name, metric="logit_diff",
        granularity="coefficients", components=labels, scores=scores, shape=[len(labels)], axes=["coefficient"],
        clean_metric=float(baseline.mean()), wall_seconds=time.perf_counter() - start,
        n_forward_passes=len(coefficients) * (config.new_tokens + 2) + config.new_tokens + 3,
        settings={"vector": config.vector, "mode": config.mode,
                  "site": ",".join(str(c) for _, c in steering if c is not None) or None,
                  "coefficients": list(coefficients), "positive": config.positive, "negative": config.negative,
                  "reduce": config.reduce, "new_tokens": config.new_tokens, "do_sample": config.do_sample,
                  "temperature": config.temperature, "seed": config.seed, "neutral": config.neutral,
                  "neutral_tokens": int(neutral.numel()), "ablate": list(config.ablate or ()),
                  "dictionary": config.dictionary, "clamp": list(config.clamp or ()), "n_prompts": len(task.prompt_ids)},
        tokens=[model.tokenizer.decode([t]) for t in task.prompt_ids[0]],
        arrays={"logit_diff": np.array(rows["logit_diff"]), "kl_neutral": np.array(rows["kl_neutral"]),
                "per_prompt": np.stack(rows["per_prompt"], axis=1)},
        extra=vars(SteerPayload(prompts, plain_text, steered, float(baseline.mean()), norms[0], site_norms[0],
                                [str(c) if c is not None else None for _, c in steering], norms, site_norms)),
    )


register(Analysis(
    name="steer", inputs="task", config=SteerConfig, run=run_steering, methods=("steering",), page="Steering",
    payload=SteerPayload, figures="interp.ui.figures:steering_figures", figure_file="steer.html", default_input="sentiment",
    printed=Printed("change of {metric}; KL on neutral text, nats/token", ordered=True, beside=(("kl_neutral", "KL"),)),
    summary="steering: a vector added for a sweep of coefficients; generated text, a task's logit difference and "
            "the KL on neutral text"))

__all__ = ["SteerConfig", "SteerPayload", "SteeringError", "feature_vector", "run_steering"]
