"""``sae_atoms.massive``: massive tokens found by the median rule, left out of a store's batches, and
left out of ``explained_variance_typical``."""

from __future__ import annotations

import pytest
import torch

from sae_atoms.massive import drop_massive_tokens, massive_share, typical


def _stream(n: int = 1000, d: int = 16, massive: tuple[int, ...] = (3, 500)) -> torch.Tensor:
    """Gaussian rows of norm about 4, and at ``massive`` rows one direction with norm 400 (100x)."""
    torch.manual_seed(0)
    x = torch.randn(n, d)
    x[list(massive)] = 0.0
    x[list(massive), 0] = 400.0
    return x


def test_typical_and_massive_share_find_the_planted_rows():
    x = _stream()
    keep = typical(x)
    assert (~keep).nonzero().flatten().tolist() == [3, 500]
    share = massive_share(x)
    assert share["frac"] == pytest.approx(2 / 1000)
    sq = x.pow(2).sum(-1)  # 2 x 400^2 against about 998 x 16
    assert share["sq_norm_share"] == pytest.approx(float(sq[[3, 500]].sum() / sq.sum()))
    assert share["sq_norm_share"] > 0.9
    assert typical(x, ratio=1e6).all() and typical(torch.zeros(0, 4)).numel() == 0


class _Store:
    """The two batch readers of a SAELens ``ActivationsStore`` that ``drop_massive_tokens`` wraps."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def get_filtered_llm_batch(self, raise_on_epoch_end: bool = False) -> torch.Tensor:
        return self.x

    def _get_filtered_multi_hook_llm_batch(self, raise_on_epoch_end: bool = False) -> dict[str, torch.Tensor]:
        return {"a": self.x, "b": self.x.flip(0)}  # the second hook's massive rows are elsewhere


def test_drop_massive_tokens_leaves_them_out_of_single_and_multi_hook_batches():
    x = _stream()
    store = _Store(x)
    drop_massive_tokens(store)
    single = store.get_filtered_llm_batch(raise_on_epoch_end=True)
    assert single.shape == (998, 16) and single.norm(dim=-1).max() < 40
    multi = store._get_filtered_multi_hook_llm_batch()
    # a token massive at either hook goes: rows 3, 500 (hook a) and 999-3, 999-500 (hook b)
    assert multi["a"].shape == multi["b"].shape == (996, 16)
    assert max(float(t.norm(dim=-1).max()) for t in multi.values()) < 40


class _Identity:
    """An "SAE" whose reconstruction is its input except at rows whose first coordinate is above 100."""

    W_dec, dtype = torch.zeros(1), torch.float32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z[:, :1] > 100, torch.zeros_like(z), z)


def test_explained_variance_typical_leaves_out_the_massive_tokens():
    from sae_atoms.evals.downstream import sparsity_and_variance

    x = _stream()
    got = sparsity_and_variance(_Identity(), x, batch_size=300)  # the massive rows fall in two batches
    assert got["explained_variance_typical"] == pytest.approx(1.0)
    assert got["explained_variance"] < 0.1  # the two unexplained rows hold most of the variance
