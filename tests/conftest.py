"""Shared fixtures. Nothing here reaches the network: HF_HUB_OFFLINE is forced on."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

import interp
from interp import tasks


def _share_the_cores() -> None:
    """Under pytest-xdist (``-n auto``) each worker gets its share of the cores' threads, and so do
    the processes it starts (notebook kernels, the app, benchmark scripts): two workers with two
    threads each on two cores ran four times slower than one worker."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores()


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
