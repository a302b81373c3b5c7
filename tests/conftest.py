"""Shared fixtures. Real-model fixtures are session scoped: the model loads once per run."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# torch is imported here before sae_atoms, so its wait is chosen here (sae_atoms.threads): the passive one, with
# which in-process `sae-atoms` calls keep their thread count when the test run's own processes load the machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

REAL_HOOK = "blocks.12.hook_resid_post"
THREADS = max(1, min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _threads():
    """Every test starts at THREADS torch threads: an in-process `sae-atoms` call (cli.main ->
    set_threads, chosen from the load) would otherwise set the count for the tests after it."""
    torch.set_num_threads(THREADS)


@pytest.fixture
def tiny_model():
    """A random 2-layer HookedTransformer (d_model 32, no tokenizer) for fast unit tests."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=32,
                                  d_vocab=50, act_fn="gelu", normalization_type="LN", seed=0)
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M-Instruct (built into $SAE_ATOMS_CACHE on first use)."""
    from sae_atoms.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def fact_data():
    """City -> country prompts (4 templates) for the 150 most populous cities, plus country -> capital."""
    from sae_atoms.data import fact_prompts

    return fact_prompts(n_cities=150, relations=("city_country", "country_capital"), seed=0)


@pytest.fixture(scope="session")
def real_acts(real_model, fact_data):
    """Real subject-token activations at blocks.12.hook_resid_post (train and heldout rows)."""
    from sae_atoms.activations import extract

    return extract(real_model, fact_data, REAL_HOOK, position="subject_last", batch_size=64, progress=False)
