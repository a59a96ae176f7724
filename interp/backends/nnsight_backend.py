"""Backend over nnsight's ``LanguageModel`` (locally, or remotely on NDIF with ``remote=True``).

Remote execution needs an NDIF API key: ``nnsight.CONFIG.set_default_api_key("...")`` once, or
the ``NDIF_API_KEY`` environment variable. Only models hosted by NDIF can run remotely.

A remote request carries the trace's code and every object it uses, pickled. NDIF's machines
have torch, transformers and nnsight but not interp, so interp's packages are registered with
cloudpickle to travel by value (their functions' and classes' code, not an import by name).
``remote="local"`` runs the same requests through nnsight's local simulation of NDIF
(serialized, deserialized with local packages hidden, run here).
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import torch

from interp import hf_compat
from interp.architectures import Layout
from interp.backends.base import Backend, RunOutput, RunSpec
from interp.backends.nnsight_trace import run_generation, run_session, run_trace
from interp.config import ModelConfig
from interp.errors import first_line

# packages whose code a remote request may carry (an edit's class, a trace's helpers)
SHIPPED_BY_VALUE = ("interp", "circuits", "probes")


# packages whose hooks on the modules are their own business (nnsight's, Accelerate's placement);
# any other hook is interp's (or its user's), which NDIF's copy of the model would not have
LIBRARY_HOOKS = ("nnsight", "accelerate", "torch", "transformers")


class NNsightBackend(Backend):
    name = "nnsight"
    gathers_logit_positions = True

    def __init__(self, hf_model: torch.nn.Module, tokenizer, config: ModelConfig, layout: Layout,
                 remote: bool | str = False, lm=None) -> None:
        """``remote``: False (run here), True (each request to NDIF) or ``"local"`` (nnsight's
        local simulation of NDIF). ``lm``: nnsight's model built from a hub id (what NDIF needs to
        name the model); None: one built around ``hf_model``."""
        from nnsight import LanguageModel

        self.hf_model = hf_model
        self.config = config
        self.layout = layout
        self.remote = remote
        self.lm = LanguageModel(hf_model, tokenizer=tokenizer) if lm is None else lm
        unembedding = hf_model.get_output_embeddings()
        self.unembed = next(name for name, module in hf_model.named_modules() if module is unembedding)
        # the modules as loaded: a remote run checks that none was swapped here since (NDIF's
        # copy of the model would still run the original)
        self._modules = {name: id(module) for name, module in hf_model.named_modules()}

    def _check(self, spec: RunSpec) -> None:
        """What one run asks that this backend cannot do (NotImplementedError)."""
        for site, edits in spec.edits.items():
            if site.kind == "pattern" and edits:
                raise NotImplementedError(
                    "editing attention patterns is not supported on the nnsight backend; use backend='transformer_lens'"
                )
        if any(site.kind == "resid_mid" for site in spec.sites):
            raise NotImplementedError("resid_mid is not exposed on the nnsight backend; use backend='transformer_lens'")
        if self.remote and spec.keep_grad and spec.after is None:  # the graph would stay on NDIF
            raise NotImplementedError("a remote run keeps its gradients only through RunSpec.after, which takes them "
                                      "inside the request")

    def _check_request(self) -> None:
        """Before a request leaves (once, whatever it holds): no local hook or swapped module that
        NDIF's copy of the model would lack, and interp's code registered to travel by value."""
        if not self.remote:
            return
        hooked = [name or "the model" for name, module in self.hf_model.named_modules()
                  for hook in (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
                  if getattr(hook, "__module__", "").split(".")[0] not in LIBRARY_HOOKS]
        if hooked:  # a bug: whatever registered it would silently not run on NDIF's copy of the model
            raise RuntimeError(f"a hook on the local modules ({hooked[0]}) would not run on NDIF; this run cannot be "
                               "sent as it is")
        swapped = [name for name, module in self.hf_model.named_modules() if self._modules.get(name) != id(module)]
        if swapped:  # a bug, as above
            raise RuntimeError(f"a local module was replaced ({swapped[0]}); NDIF would run the original, so this run "
                               "cannot be sent as it is")
        for name in SHIPPED_BY_VALUE:
            if name in sys.modules:
                import cloudpickle

                cloudpickle.register_pickle_by_value(sys.modules[name])

    def _run(self, spec: RunSpec, remote: bool | str) -> functools.partial:
        """The call of :func:`run_trace` that runs ``spec``."""
        c = self.config
        model_kwargs = self.model_kwargs(spec)
        mask = model_kwargs.pop("attention_mask", None)
        if mask is None:
            batch, length = spec.input_ids.shape
            past = hf_compat.cache_length(spec.past_key_values)
            mask = torch.ones(batch, past + length, dtype=torch.long, device=spec.input_ids.device)
        inputs = {"input_ids": spec.input_ids, "attention_mask": mask}
        cache_field = hf_compat.cache_output_field() if spec.return_cache else None
        return functools.partial(run_trace, self.lm, self.layout, c.n_heads, c.n_kv_heads, c.d_head, spec, inputs,
                                 model_kwargs, cache_field, remote, self.unembed)

    def _output(self, spec: RunSpec, logits: torch.Tensor, activations: dict, cache, after) -> RunOutput:
        missing = [site for site, value in activations.items() if value is None]
        if missing and missing[0].kind == "pattern":
            raise RemoteRunError(f"the model computed no attention probabilities at {missing[0]} (NDIF runs it with an "
                                 "attention implementation that returns none); read patterns from a local model")
        return RunOutput(logits, activations, cache, after)

    def forward(self, spec: RunSpec) -> RunOutput:
        self._check(spec)
        self._check_request()
        try:
            logits, activations, cache, after = self._run(spec, self.remote)()
        except Exception as exc:
            if not self.remote:
                raise
            # the network, the hub and NDIF raise many kinds; the cause stays chained for a debugger
            raise RemoteRunError(f"the request to NDIF failed: {first_line(exc)}") from exc
        return self._output(spec, logits, activations, cache, after)

    def forward_many(self, specs: list[RunSpec]) -> list[RunOutput]:
        """Remote: all of ``specs`` in one request (an nnsight session holding one trace each)."""
        if not self.remote or len(specs) < 2:
            return [self.forward(spec) for spec in specs]
        for spec in specs:
            self._check(spec)
        self._check_request()
        try:
            results = run_session(self.lm, [self._run(spec, False) for spec in specs], self.remote)
        except Exception as exc:
            raise RemoteRunError(f"the request to NDIF failed: {first_line(exc)}") from exc
        return [self._output(spec, *result) for spec, result in zip(specs, results)]

    def generate(self, spec: RunSpec, new_tokens: int, next_token) -> torch.Tensor:
        """Remote: the whole loop in one request (an nnsight session of a trace per token, each
        token chosen on NDIF)."""
        if not self.remote or not new_tokens:
            return super().generate(spec, new_tokens, next_token)
        if spec.attention_mask is None:
            spec = dataclasses.replace(spec, attention_mask=torch.ones_like(spec.input_ids, dtype=torch.bool))
        self._check(spec)
        self._check_request()
        c = self.config
        try:
            return run_generation(self.lm, (self.layout, c.n_heads, c.n_kv_heads, c.d_head), spec, new_tokens, next_token,
                                  self.remote, self.unembed)
        except Exception as exc:
            raise RemoteRunError(f"the request to NDIF failed: {first_line(exc)}") from exc


class RemoteRunError(ValueError):
    """A forward sent to NDIF that did not come back (network, NDIF, the hub): not a bug in interp,
    so the command line says it in one line, as it does a bad input."""
