"""``Model``: one loaded causal LM behind one interface, whatever backend runs it."""

from __future__ import annotations

import dataclasses
import math

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

import torch

from interp import hf_compat
from interp.architectures import Layout, decoder_layers
from interp.backends.base import Backend, Edit, RunOutput, RunSpec, appended
from interp.batch import PADDING_SIDES, PaddingError, Tokens, pad_id
from interp.components import INDEX_AXIS, POSITION_AXIS, SPLICE_KINDS, Component, ComponentError, Site
from interp.config import ModelConfig
from interp.experts import expert_sites
from interp.resume import Resume, layers_replayed
from interp.splicing import Splice, with_splices

PatchValue = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
ComponentLike = Union[Component, str]
TokensLike = Union[torch.Tensor, Tokens, str, Sequence[str]]  # ids, padded ids, or text (tokenized as tokenize does)


# what one remote request (a group of a sweep's forwards) may return in logits
REMOTE_REQUEST_LOGITS_BYTES = 2**30


class RemoteUnsupportedError(ValueError):
    """A run a remote model cannot do (it needs the local modules' hooks)."""


class TokenizationError(ValueError):
    """Text that does not tokenize the way an analysis needs (lengths, single tokens)."""


def component_index(component: Component, ndim: int) -> tuple:
    """Index tuple that selects ``component`` from its site's canonical tensor."""
    index: list = [slice(None)] * ndim
    if component.index is not None:
        index[INDEX_AXIS[component.kind]] = component.index
    if component.position is not None:
        index[POSITION_AXIS[component.kind]] = component.position
    return tuple(index)


@dataclasses.dataclass(frozen=True, eq=False)
class ComponentEdit:
    """An edit that replaces (tensor) or transforms (callable) one component's slice.

    ``offset`` is the absolute position of the activation's first position (0 for a full
    forward; during cached generation each step's activation holds only its new positions, and
    :meth:`Model.generate` shifts every edit to that step with :meth:`at`). A shifted edit at one
    position applies only in the step that computes that position.
    """

    component: Component
    value: PatchValue
    offset: int | None = None  # None: not shifted (a full forward; the position indexes directly)
    prompt_length: int = 0  # with an offset: what a negative position counts back from

    def at(self, offset: int, prompt_length: int) -> "ComponentEdit":
        """The edit for an activation whose first position is ``offset``, in a generation from a
        prompt of ``prompt_length`` positions (a negative position counts back from the prompt's
        end, once, not from each step's newest token)."""
        return dataclasses.replace(self, offset=offset, prompt_length=prompt_length)

    def __call__(self, activation: torch.Tensor) -> torch.Tensor:
        component = self.component
        if self.offset is not None and isinstance(component.position, int):
            absolute = component.position + (self.prompt_length if component.position < 0 else 0)
            local = absolute - self.offset
            if not 0 <= local < activation.shape[POSITION_AXIS[component.kind]]:
                return activation  # that position is computed in another step
            component = component.at(local)
        index = component_index(component, activation.dim())
        patched = activation.clone()
        value = self.value
        patched[index] = value(activation[index]) if callable(value) else value.to(activation.device, activation.dtype)
        return patched


def component_edit(component: Component, value: PatchValue) -> Edit:
    """An edit that replaces (tensor) or transforms (callable) one component's slice."""
    return ComponentEdit(component, value)


@dataclasses.dataclass
class Sampler:
    """Chooses each next token from the last position's logits [batch, d_vocab] (float32):
    greedy unless ``do_sample``; then the logits are divided by ``temperature``, cut to the
    ``top_k`` most likely (0: all) and to the smallest set holding ``top_p`` of the probability,
    and sampled with a generator seeded by ``seed``, made on the logits' device at the first call
    (so a remote generation samples where it runs)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    _generator: torch.Generator | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no cut), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token [batch]."""
        if not self.do_sample:
            return logits.argmax(-1)
        if self._generator is None:
            self._generator = torch.Generator(device=logits.device)
            self._generator.manual_seed(0 if self.seed is None else self.seed)
        logits = logits / self.temperature
        if self.top_k:
            cut = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < cut, float("-inf"))
        if self.top_p < 1:
            ordered, order = logits.sort(dim=-1, descending=True)
            before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # probability of the tokens ranked above
            logits = logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= self.top_p),
                                        float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=self._generator)[:, 0]


class ActivationCache(Mapping):
    """Activations (or gradients) by site; index with a Site, a Component or its name."""

    def __init__(self, by_site: dict[Site, torch.Tensor]) -> None:
        self._by_site = by_site

    def __getitem__(self, key: Union[Site, ComponentLike]) -> torch.Tensor:
        if isinstance(key, Site):
            return self._by_site[key]
        component = Component.parse(key)
        if component.site not in self._by_site:
            raise KeyError(f"{component} was not cached; cached sites: {sorted(self._by_site)}")
        activation = self._by_site[component.site]
        return activation[component_index(component, activation.dim())]

    def __iter__(self) -> Iterator[Site]:
        return iter(self._by_site)

    def __len__(self) -> int:
        return len(self._by_site)


class Model:
    """A loaded model: tokenization, forward passes, caching, patching, gradients.

    Build one with :func:`interp.load_model`.
    """

    def __init__(self, backend: Backend, tokenizer, config: ModelConfig, layout: Layout, source: str, device: str = "cpu") -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.layout = layout
        self.source = source
        self.device = device
        self._active_edits: dict[Site, list[Edit]] = {}
        self._splices: dict[Site, Splice] = {}
        # why padded batches would give wrong numbers on this model (``hf_compat.check_padding`` at
        # load); None: they give each row its own numbers
        self.padding_problem: str | None = None
        # False: that check has not run yet, and runs at the first padded batch (a remote model: its
        # forwards are requests, so it is not run at load)
        self.padding_checked = True
        # the attention implementation runs use ("eager" or "sdpa"; ``interp.loading`` picks it);
        # a run that reads or edits attention probabilities runs eager whatever it is
        self.attention = "eager"
        # True: analyses run every forward in full, from the first layer and position, without
        # the shortcuts that replay recorded tensors (a resumed layer, a KV prefix): a remote model
        # (NDIF runs its own modules and has none of those tensors) sets it
        self.full_forwards = False

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({c.name!r}, backend={self.backend.name!r}, layers={c.n_layers}, "
                f"heads={c.n_heads}/{c.n_kv_heads} kv, d_model={c.d_model})")

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.backend.hf_model

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (metrics and scores are float32 whatever it is)."""
        return next(self.hf_model.parameters()).dtype

    def layer_devices(self) -> list[torch.device]:
        """The device each decoder layer computes on (one device unless a device map spread them)."""
        from interp.placement import execution_device

        return [execution_device(layer) for layer in self.decoder_layers()]

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The model's list of decoder layers (as the backend runs them)."""
        return decoder_layers(self.hf_model, self.layout)

    # ------------------------------------------------------------------ tokens
    def to_tokens(self, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Token ids [batch, pos] with the tokenizer's own special tokens; all texts must have equal
        length (:meth:`tokenize` pads texts of different lengths and returns the mask too)."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        lengths = {len(i) for i in ids}
        if len(lengths) > 1:
            first = len(ids[0])
            bad = next(k for k, i in enumerate(ids) if len(i) != first)
            raise TokenizationError(
                f"texts tokenize to different lengths: {texts[0]!r} has {first} tokens but {texts[bad]!r} has "
                f"{len(ids[bad])}; model.tokenize(texts) pads them and returns the attention mask"
            )
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def tokenize(self, text: Union[str, Sequence[str]], padding_side: str = "left") -> Tokens:
        """Token ids of one or more texts (with the tokenizer's own special tokens), padded on
        ``padding_side`` to the longest: a :class:`~interp.batch.Tokens` (ids [batch, pos] and the
        mask of real tokens, None when nothing is padded) that ``run``, ``run_with_cache`` and
        ``gradients`` take directly."""
        texts = [text] if isinstance(text, str) else list(text)
        if padding_side not in PADDING_SIDES:
            raise PaddingError(f"unknown padding side {padding_side!r}; known: {', '.join(PADDING_SIDES)}")
        rows = [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        empty = next((k for k, row in enumerate(rows) if not row), None)
        if empty is not None:
            raise TokenizationError(f"text {empty} ({texts[empty]!r}) has no tokens")
        return Tokens.pad(rows, pad_id(self.tokenizer), padding_side, self.device)

    def to_str_tokens(self, tokens: Union[str, torch.Tensor, Sequence[int]]) -> list[str]:
        """The tokens of one text (or one row of ids) as strings."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens)[0]
        if isinstance(tokens, Tokens):
            tokens = tokens.ids
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.reshape(-1).tolist()
        return [self.tokenizer.decode([t]) for t in tokens]

    def to_single_token(self, text: str) -> int:
        """The id of a text that must be exactly one token (no special tokens added)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise TokenizationError(f"{text!r} is not a single token for {self.config.name} (it is {len(ids)} tokens)")
        return ids[0]

    # ------------------------------------------------------------------ components
    def validate(self, component: ComponentLike, n_positions: int | None = None) -> Component:
        """The parsed component; a one-line :class:`ComponentError` if the model (with its
        spliced dictionaries) has no such component."""
        component = Component.parse(component).validate(self.config, n_positions)
        if component.kind in SPLICE_KINDS:
            splice = self._splices.get(Site(component.kind.removesuffix("_error"), component.layer))
            if splice is None:
                what = "transcoder" if component.kind.startswith("tc") else "SAE"
                spliced = ", ".join(f"{s.site.kind.upper()} at L{s.site.layer}" for s in self._splices.values()) or "none"
                raise ComponentError(f"component {component} does not exist: no {what} is spliced in at layer "
                                     f"{component.layer} (spliced: {spliced})")
            if component.index is not None and not 0 <= component.index < splice.width:
                raise ComponentError(f"component {component} is out of range: the dictionary has {splice.width} latents")
        return component

    @property
    def splices(self) -> list[Splice]:
        """The dictionaries spliced in now, by layer."""
        return [self._splices[site] for site in sorted(self._splices)]

    @contextmanager
    def spliced(self, splice: Splice) -> Iterator["Model"]:
        """Within the block, every run goes through ``splice`` (see ``interp.splicing``) and its
        latents and error term are components."""
        if splice.site in self._splices:
            raise ComponentError(f"a dictionary is already spliced in as L{splice.site.layer}.{splice.site.kind.upper()} "
                                 f"(at {self._splices[splice.site].host}); one per kind and layer")
        self._splices[splice.site] = splice
        try:
            if splice.error_term:
                self._check_splice(splice)
            yield self
        finally:
            del self._splices[splice.site]

    @torch.no_grad()
    def _check_splice(self, splice: Splice, n_tokens: int = 6) -> None:
        """Once per splice: with its error term the model's logits must stay the plain model's (on
        a few fixed tokens), whatever shortcut the splice takes to rebuild its host."""
        from interp import shortcuts
        from interp.hf_compat import probe_tokens

        tokens = probe_tokens(self, n_tokens, rows=1)
        spliced = self.forward(RunSpec(tokens)).logits
        del self._splices[splice.site]
        try:
            plain = self.forward(RunSpec(tokens)).logits
        finally:
            self._splices[splice.site] = splice
        shortcuts.check(f"splicing a dictionary at {Component(splice.host.kind, splice.host.layer)} with its error term", spliced, plain,
                        f"{self.config.name}, {self.backend.name} backend", what="the logits", dtype=self.dtype)

    # ------------------------------------------------------------------ running
    def forward(self, spec: RunSpec, resume: Resume | None = None,
                window: tuple[int, int] | None = None) -> RunOutput:
        """Low-level forward; edits from active ``patch`` contexts are applied first, and
        spliced dictionaries run at their hosts. ``window`` = (offset, prompt length): the
        positions run are ``offset``, ``offset + 1``, ... of a generation from a prompt of that
        length, and every component edit is shifted to them (:meth:`ComponentEdit.at`)."""
        spec = self._prepared(spec, window)
        needs_eager = self.attention != "eager" and any(site.kind == "pattern" for site in spec.sites)
        with self.eager_attention() if needs_eager else nullcontext():
            return self._forward(spec, resume)

    def _prepared(self, spec: RunSpec, window: tuple[int, int] | None = None) -> RunSpec:
        """``spec`` with the active ``patch`` contexts' edits first (shifted to ``window``); a
        padded batch refused where padding is known to give wrong numbers."""
        if spec.attention_mask is not None and not bool(spec.attention_mask.all()):
            if not self.padding_checked:
                self._check_padding()
            if self.padding_problem:
                raise PaddingError(self.padding_problem)
        if self._active_edits or window is not None:
            merged = {site: list(edits) for site, edits in self._active_edits.items()}
            for site, edits in spec.edits.items():
                merged.setdefault(site, []).extend(edits)
            if window is not None:
                merged = {site: [e.at(*window) if isinstance(e, ComponentEdit) else e for e in edits]
                          for site, edits in merged.items()}
            spec = dataclasses.replace(spec, edits=merged)  # the caller's spec stays as it was
        return spec

    def _check_padding(self) -> None:
        """``hf_compat.check_padding`` on the plain model (the caller's ``patch`` edits set aside
        meanwhile: an edit at one position would edit other tokens in the padded row)."""
        edits, self._active_edits = self._active_edits, {}
        self.padding_checked = True  # the check's own padded forwards come through ``_prepared``
        try:
            self.padding_problem = hf_compat.check_padding(self)
        except BaseException:
            self.padding_checked = False
            raise
        finally:
            self._active_edits = edits

    @property
    def remote(self) -> bool:
        """Whether forwards run remotely (on NDIF, or nnsight's local simulation of it)."""
        return bool(self.backend.remote)

    def forwards(self, runs: Iterable[tuple[RunSpec, Resume | None]]) -> Iterator[RunOutput]:
        """:meth:`forward` of each (spec, resume), in order, for a sweep of many forwards.

        A local model runs each one when the next output is asked for (one at a time in memory).
        A remote model sends them in groups, each group one request (an nnsight session), as
        large as keeps the logits a request returns under ``REMOTE_REQUEST_LOGITS_BYTES``; a
        remote sweep has no resumes (:attr:`full_forwards`)."""
        if not self.remote:
            for spec, resume in runs:
                yield self.forward(spec, resume)
            return
        group: list[RunSpec] = []
        size = 0
        for spec, resume in runs:
            if resume is not None:
                raise ValueError("a remote model runs every forward in full: no resume")
            group.append(self._prepared(spec))
            size += self._logits_bytes(spec)
            if size >= REMOTE_REQUEST_LOGITS_BYTES:
                yield from self._sent(group)
                group, size = [], 0
        if group:
            yield from self._sent(group)

    def _sent(self, specs: list[RunSpec]) -> list[RunOutput]:
        """A remote model's forwards of already prepared ``specs``, in one request."""
        for spec in specs:
            self._check_remote(spec)
        outputs = self.backend.forward_many(specs)
        for out in outputs:
            out.logits = out.logits.to(self.device)
        return outputs

    def _check_remote(self, spec: RunSpec) -> None:
        """One line when a remote model is asked for what runs only on the local modules."""
        if any(site.kind == "expert" for site in spec.sites) or self._splices:
            raise RemoteUnsupportedError("expert sites and spliced dictionaries run as hooks on the local modules, "
                                         "which NDIF does not run; use a local copy of the model")

    def _logits_bytes(self, spec: RunSpec) -> int:
        """Bytes of the logits ``spec``'s forward returns."""
        batch, length = spec.input_ids.shape
        kept = (spec.logit_positions.shape[1] if spec.logit_positions is not None
                else min(spec.logits_to_keep or length, length))
        return batch * kept * self.config.d_vocab * self.dtype.itemsize

    @contextmanager
    def eager_attention(self) -> Iterator["Model"]:
        """Within the block, attention runs eager (it computes the probabilities that pattern sites
        read and edit); the model's own implementation is restored after."""
        if self.attention == "eager":
            yield self
            return
        self.hf_model.set_attn_implementation("eager")
        try:
            yield self
        finally:
            self.hf_model.set_attn_implementation(self.attention)

    def _forward(self, spec: RunSpec, resume: Resume | None) -> RunOutput:
        if self.remote:
            self._check_remote(spec)
        after = None  # a local model runs ``spec.after`` here, on what comes back; a remote one in the request
        if spec.after is not None and not self.remote:
            after, spec = spec.after, dataclasses.replace(spec, after=None)
        virtual_reads: dict[Site, torch.Tensor] = {}
        if self._splices:
            spec = with_splices(spec, self.splices, virtual_reads)
        gather = None if self.backend.gathers_logit_positions else spec.logit_positions
        with expert_sites(self, spec, virtual_reads) as spec, self._unembedding_at(gather):
            if resume is None:
                out = self.backend.forward(spec)
            else:
                if resume.past_key_values is not None:
                    spec.past_key_values = resume.past_key_values
                with layers_replayed(self.decoder_layers(), resume.layer, resume.resid, self.layout.layer_returns_tuple):
                    out = self.backend.forward(spec)
        out.logits = out.logits.to(self.device)  # a device map unembeds on the last layer's device
        out.activations.update(virtual_reads)
        if after is not None:
            out.after = after(out.logits, out.activations)
        return out

    @contextmanager
    def _unembedding_at(self, positions: torch.Tensor | None) -> Iterator[None]:
        """Within the block, the unembedding reads only ``positions`` [batch, k] of each row (None:
        every position it is handed): a forward pre-hook gathers its input, so the logits are
        [batch, k, d_vocab] whatever the padding."""
        if positions is None:
            yield
            return
        if positions.dim() != 2:
            raise ValueError(f"logit_positions must be [batch, k], got shape {tuple(positions.shape)}")

        def gather(module, args):
            hidden = args[0]
            index = positions.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
            return (hidden.gather(1, index), *args[1:])

        handle = self.hf_model.get_output_embeddings().register_forward_pre_hook(gather)
        try:
            yield
        finally:
            handle.remove()

    def splice_hosts(self) -> dict[Site, Site]:
        """Each spliced dictionary's latents and error-term sites -> the activation it replaces."""
        return {site: splice.host for splice in self._splices.values() for site in splice.sites}

    def edited_sites(self) -> set[Site]:
        """Sites whose values every run changes (active ``patch`` contexts and splice hosts)."""
        return set(self._active_edits) | {splice.host for splice in self._splices.values()}

    @torch.no_grad()
    def generate(self, tokens: TokensLike, new_tokens: int, patches: Mapping[ComponentLike, PatchValue] | None = None,
                 *, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, use_cache: bool = True,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Exactly ``new_tokens`` tokens after each prompt: ids [batch, pos + new_tokens].

        ``tokens`` are ids [batch, pos] (padded on the left, ``attention_mask`` marking real
        tokens), :class:`Tokens` or text (several texts are left-padded). Every edit reaches every
        decoded token: ``patches`` (as :meth:`patch` takes them), the edits of enclosing
        ``model.patch`` blocks, spliced dictionaries and dropped layers. An edit at all positions
        applies to the new positions too; an edit at one position applies once, in the step that
        computes it (a negative position counts back from the prompt's end). With ``use_cache``
        (the default) each step runs only the newest token over the KV cache of the edited earlier
        positions; ``use_cache=False`` reruns the whole sequence every step, which gives the same
        tokens for any edit that acts on each position by itself (a test checks it). A model with
        :attr:`full_forwards` (a remote one) always reruns the whole sequence; a remote model runs
        the whole loop, every step and its choice of token, in one request.

        Greedy unless ``do_sample``; then as :class:`Sampler` says (``temperature``, ``top_k``,
        ``top_p``, ``seed``). A remote model samples on NDIF's device, whose random numbers differ
        from this machine's for the same seed.
        """
        if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 0:
            raise ValueError(f"new_tokens must be a whole number >= 0, got {new_tokens!r}")
        next_token = Sampler(do_sample, temperature, top_k, top_p, seed)
        ids, mask = self._ids_and_mask(tokens, attention_mask)
        if mask is None:
            mask = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        elif not bool(mask[:, -1].all()):
            raise PaddingError("generation appends after each row's last column, which is padding in some rows: "
                               "pad the prompts on the left (model.tokenize(texts) does)")
        mask = mask.bool()
        prompt_length = ids.shape[1]
        use_cache = use_cache and not self.full_forwards
        cache = None
        with self.patch(patches or {}):
            if self.remote and new_tokens:
                spec = self._prepared(RunSpec(ids, logits_to_keep=1, attention_mask=mask), window=(0, prompt_length))
                self._check_remote(spec)
                return self.backend.generate(spec, new_tokens, next_token).to(ids.device)
            for _ in range(new_tokens):
                if use_cache:
                    new = ids if cache is None else ids[:, -1:]
                    spec = RunSpec(new, logits_to_keep=1, past_key_values=cache, return_cache=True, attention_mask=mask)
                else:
                    spec = RunSpec(ids, logits_to_keep=1, attention_mask=mask)
                out = self.forward(spec, window=(ids.shape[1] - spec.input_ids.shape[1], prompt_length))
                cache = out.past_key_values
                ids, mask = appended(ids, mask, next_token(out.logits[:, -1].float()))
        return ids

    def generate_text(self, text: Union[str, Sequence[str]], new_tokens: int, patches: Mapping[ComponentLike, PatchValue] | None = None,
                      **options) -> list[str]:
        """The text each prompt continues with (:meth:`generate`'s options), decoded without
        special tokens."""
        ids = self.generate(text, new_tokens, patches, **options)
        return [self.tokenizer.decode(row[-new_tokens:].tolist(), skip_special_tokens=True) if new_tokens else ""
                for row in ids]

    def _sites(self, components: Sequence[Union[ComponentLike, Site]]) -> set[Site]:
        sites = set()
        for item in components:
            if isinstance(item, Site):
                self.validate(Component(item.kind, item.layer, 0 if item.kind in INDEX_AXIS else None))
                sites.add(item)
            else:
                sites.add(self.validate(item).site)
        return sites

    def _ids_and_mask(self, tokens: TokensLike, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ids, mask) of a tensor of ids (with an optional mask), a :class:`Tokens`, or text (a
        string or a list of strings, tokenized and left-padded as :meth:`tokenize` does)."""
        if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens)):
            if attention_mask is not None:
                raise ValueError("text makes its own attention mask; give no attention_mask with it")
            tokens = self.tokenize(tokens)
        if isinstance(tokens, Tokens):
            if attention_mask is not None:
                raise ValueError("give the attention mask once: Tokens already carry theirs")
            return tokens.ids, tokens.mask
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; the tokens have {tuple(tokens.shape)}")
        return tokens, attention_mask

    @torch.no_grad()
    def run(self, tokens: TokensLike, logits_to_keep: int = 0, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, pos, d_vocab] (only the last ``logits_to_keep`` positions if > 0) of ids
        [batch, pos] (``attention_mask`` [batch, pos]: True for real tokens), of :class:`Tokens`,
        or of text (``model.run("The capital of France is")``; several texts are left-padded)."""
        ids, mask = self._ids_and_mask(tokens, attention_mask)
        return self.forward(RunSpec(ids, logits_to_keep=logits_to_keep, attention_mask=mask)).logits

    @torch.no_grad()
    def run_with_cache(self, tokens: TokensLike, components: Sequence[Union[ComponentLike, Site]],
                       attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ActivationCache]:
        """Logits and the activations of the sites holding ``components`` (padding positions of
        padded tokens hold values no real token reads)."""
        ids, mask = self._ids_and_mask(tokens, attention_mask)
        out = self.forward(RunSpec(ids, reads=self._sites(components), attention_mask=mask))
        return out.logits, ActivationCache({s: a.detach() for s, a in out.activations.items()})

    @contextmanager
    def patch(self, patches: Mapping[ComponentLike, PatchValue]) -> Iterator["Model"]:
        """Within the block, every run replaces/transforms the given components.

        A value is a tensor (the component's new slice, broadcast over batch) or a function of the
        current slice.
        """
        added: list[tuple[Site, Edit]] = []
        for name, value in patches.items():
            component = self.validate(name)
            edit = component_edit(component, value)
            self._active_edits.setdefault(component.site, []).append(edit)
            added.append((component.site, edit))
        try:
            yield self
        finally:
            for site, edit in added:
                self._active_edits[site].remove(edit)
                if not self._active_edits[site]:
                    del self._active_edits[site]

    def gradients(self, tokens: TokensLike, metric: Callable[[torch.Tensor], torch.Tensor],
                  components: Sequence[Union[ComponentLike, Site]],
                  attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ActivationCache, ActivationCache]:
        """Metric value, activations and d(metric)/d(activation) at the sites of ``components``.

        ``metric`` maps logits [batch, pos, d_vocab] to a scalar; the gradient is of that scalar.
        """
        sites = self._sites(components)
        ids, mask = self._ids_and_mask(tokens, attention_mask)

        def backward(logits: torch.Tensor, activations: dict) -> tuple:  # where the forward ran (NDIF too)
            value = metric(logits)
            if value.dim() != 0:
                raise ValueError(f"metric must return a scalar to differentiate, got shape {tuple(value.shape)}")
            found = torch.autograd.grad(value, list(activations.values()), allow_unused=True)
            grads = {site: torch.zeros_like(a) if g is None else g for (site, a), g in zip(activations.items(), found)}
            return value.detach(), {site: a.detach() for site, a in activations.items()}, grads

        with torch.enable_grad():
            out = self.forward(RunSpec(ids, reads=sites, keep_grad=True, attention_mask=mask, after=backward))
        value, activations, grads = out.after
        return value, ActivationCache(activations), ActivationCache(grads)
