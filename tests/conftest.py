"""Shared fixtures. Nothing here reaches the network: HF_HUB_OFFLINE is forced on."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

import interp
from interp import tasks


def pytest_collection_modifyitems(items):
    """Every test that loads SmolLM2 (through a ``smollm2*`` fixture) is ``slow``."""
    for item in items:
        if any(name.startswith("smollm2") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2():
    return interp.load_model("smollm2-135m", backend="transformer_lens")


@pytest.fixture(scope="session")
def smollm2_nnsight():
    return interp.load_model("smollm2-135m", backend="nnsight")


@pytest.fixture(scope="session")
def random_llama():
    return interp.load_model("random-llama", backend="transformer_lens")


@pytest.fixture(scope="session")
def toy_induction():
    return interp.load_model("toy-induction", backend="transformer_lens")


@pytest.fixture(scope="session")
def llama_ioi(random_llama):
    return tasks.ioi(random_llama, n_prompts=4, seed=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
