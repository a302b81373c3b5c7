"""sae_atoms.forward: padded batches, the stop-layer rule, last-position logits."""

from __future__ import annotations

import torch

from sae_atoms.forward import batches, stop_layer
from sae_atoms.models import next_token_logits


def _ids(n: int, vocab: int = 50) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def test_batches_sort_pad_and_cover_every_row_once(tiny_model):
    tiny_model.tokenizer = None
    ids = _ids(23)
    seen = []
    for b in batches(tiny_model, ids, 5):
        lengths = [len(ids[i]) for i in b.rows]
        assert b.tokens.shape == (len(b.rows), max(lengths)) and b.last.tolist() == [n - 1 for n in lengths]
        assert b.mask.sum(1).tolist() == lengths
        seen += b.rows
    assert sorted(seen) == list(range(23)) and [len(ids[i]) for i in seen] == sorted(len(x) for x in ids)
    assert [r for b in batches(tiny_model, ids, 5, sort=False) for r in b.rows] == list(range(23))


def test_stop_layer_runs_every_hook_and_no_further():
    assert stop_layer(["blocks.3.hook_resid_post", "blocks.1.mlp.hook_post"]) == 4
    assert stop_layer(["hook_embed"]) == 0
    assert stop_layer(["blocks.0.hook_resid_pre", "ln_final.hook_normalized"]) is None


def test_next_token_logits_apply_the_final_norms_own_weights(tiny_model):
    """An unfolded final LayerNorm (weight and bias not 1 and 0) is applied, as in a full forward pass."""
    tiny_model.tokenizer = None
    with torch.no_grad():
        tiny_model.ln_final.w.mul_(3.0)
        tiny_model.ln_final.b.add_(0.5)
    ids = _ids(9)
    got = next_token_logits(tiny_model, ids, batch_size=4)
    with torch.no_grad():
        want = torch.stack([tiny_model(torch.tensor([x]))[0, -1] for x in ids])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
