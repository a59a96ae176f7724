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


# The tests `.ci/run` repeats at the declared minimum versions (``-m "compat and not slow"``): those
# that meet a dependency's interface. Every analysis reaches transformers, TransformerLens and
# nnsight through the Backend, and test_families runs every analysis through it on every family;
# the others here load models, run their caches and masks, or exercise streamlit, plotly,
# scikit-learn, pandas, datasets and tracr. The analyses' own tests (patching, attribution, edges,
# ...) compare our arithmetic with oracles, which the latest releases' run already does. None:
# the whole file; a set: those tests of it (padded forwards; a padded analysis is checked at run
# time, hf_compat.check_padding).
COMPAT = {"test_families": None, "test_backends": None, "test_hf_compat": None, "test_loading": None,
          "test_generation": None, "test_remote": None, "test_placement": None, "test_attention_implementation": None,
          "test_precision": None, "test_app": None, "test_figures": None, "test_probes": None, "test_hardening": None,
          "test_task_sources": None, "test_corpus": None, "test_tracr": None,
          "test_padding": {"test_a_padded_forward_gives_each_text_its_own_logits"}}


def pytest_collection_modifyitems(items):
    """Every test that loads SmolLM2 (through a ``smollm2*`` fixture) is ``slow``; the tests that
    meet a dependency's interface are ``compat`` (:data:`COMPAT`)."""
    for item in items:
        if any(name.startswith("smollm2") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        module = item.path.stem
        if module in COMPAT and (COMPAT[module] is None or item.originalname in COMPAT[module]):
            item.add_marker(pytest.mark.compat)


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
