"""Backends run a Hugging Face causal LM with reads and edits at activation sites."""

from interp.backends.base import Backend, Edit, RunOutput, RunSpec

BACKENDS = ("transformer_lens", "nnsight")

__all__ = ["Backend", "BACKENDS", "Edit", "RunOutput", "RunSpec"]
