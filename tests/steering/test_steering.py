"""Tests of sae_atoms.steering (interventions, selection by meaning)."""

from __future__ import annotations

import pytest
import torch

from sae_atoms import steering as st

HOOK0 = "blocks.0.hook_resid_post"
HOOK1 = "blocks.1.hook_resid_post"


def make_sae(d_in: int = 32, d_sae: int = 64, hook: str = HOOK0, seed: int = 0, W_dec: torch.Tensor | None = None):
    """A JumpReLU SAE with known weights: unit decoder rows, W_enc = W_dec^T, threshold 0."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    g = torch.Generator().manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    W = torch.randn(d_sae, d_in, generator=g) if W_dec is None else W_dec.clone()
    W = W / W.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.zero_()
    return sae


def tokens(n: int = 3, seq: int = 7, vocab: int = 50, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def resid(model, toks, hook: str, *ivs) -> torch.Tensor:
    """The activation at ``hook`` as it flows on (read at the next layer's resid_pre)."""
    assert hook == HOOK0
    store = {}
    with st.steering(model, *ivs):
        model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: store.setdefault("x", a.clone()))])
    return store["x"]


# --------------------------------------------------------------------------- positions
def test_position_mask_forms():
    m = st.position_mask(2, 5, [1, 3], "at")
    assert m.tolist() == [[False, True, False, False, False], [False, False, False, True, False]]
    m = st.position_mask(2, 5, [1, 3], "from")
    assert m.tolist() == [[False, True, True, True, True], [False, False, False, True, True]]
    assert st.position_mask(2, 5, -1).tolist() == [[False] * 4 + [True]] * 2
    assert st.position_mask(2, 5, None).all() and st.position_mask(2, 5, "all").all()
    with pytest.raises(ValueError, match="one position per row"):
        st.position_mask(3, 5, [1, 2])
    with pytest.raises(IndexError, match="out of range"):
        st.position_mask(1, 5, [5])
    with pytest.raises(ValueError, match="span"):
        st.position_mask(1, 5, 0, span="after")


# --------------------------------------------------------------------------- add
def test_add_alpha_zero_is_identity_and_exact_delta_at_chosen_positions(tiny_model):
    toks = tokens()
    clean = tiny_model(toks)
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    with st.AddDirection(HOOK0, v, alpha=0.0, positions=[2, 4, 6]).on(tiny_model):
        assert torch.equal(tiny_model(toks), clean)
    x0 = resid(tiny_model, toks, HOOK0)
    x1 = resid(tiny_model, toks, HOOK0, st.AddDirection(HOOK0, v, alpha=2.5, positions=[2, 4, 6]))
    diff = x1 - x0
    mask = st.position_mask(3, 7, [2, 4, 6])
    torch.testing.assert_close(diff[mask], (2.5 * v).expand(3, 32), rtol=0, atol=1e-5)
    assert diff[~mask].abs().max() == 0
    # span="from": from the position to the end
    x2 = resid(tiny_model, toks, HOOK0, st.AddDirection(HOOK0, v, alpha=1.0, positions=[1, 5, 6], span="from"))
    m2 = st.position_mask(3, 7, [1, 5, 6], "from")
    torch.testing.assert_close((x2 - x0)[m2], v.expand(int(m2.sum()), 32), rtol=0, atol=1e-5)
    assert (x2 - x0)[~m2].abs().max() == 0
    # nothing left behind
    assert torch.equal(tiny_model(toks), clean)


def test_hooks_removed_after_exception(tiny_model):
    toks = tokens()
    clean = tiny_model(toks)
    sae = make_sae()
    ivs = [st.AddDirection(HOOK0, torch.ones(32), 3.0), st.clamp_atoms(sae, [0, 1], 5.0)]
    with pytest.raises(RuntimeError, match="boom"):
        with st.steering(tiny_model, *ivs):
            assert not torch.allclose(tiny_model(toks), clean)
            raise RuntimeError("boom")
    assert all(len(hp.fwd_hooks) == 0 for hp in tiny_model.hook_dict.values())
    assert torch.equal(tiny_model(toks), clean)
    # the fwd_hooks form, with run_with_hooks, also leaves nothing behind
    out = tiny_model.run_with_hooks(toks, fwd_hooks=st.fwd_hooks(tiny_model, *ivs))
    assert not torch.allclose(out, clean)
    assert torch.equal(tiny_model(toks), clean)


def test_composition_adds_up(tiny_model):
    toks = tokens()
    a, b = torch.randn(32), torch.randn(32)
    x0 = resid(tiny_model, toks, HOOK0)
    both = resid(tiny_model, toks, HOOK0, st.AddDirection(HOOK0, a, 1.0, positions=2), st.AddDirection(HOOK0, b, -2.0, positions=2))
    with st.AddDirection(HOOK0, a, 1.0, positions=2).on(tiny_model):  # nested contexts compose too
        nested = resid(tiny_model, toks, HOOK0, st.AddDirection(HOOK0, b, -2.0, positions=2))
    torch.testing.assert_close(both[:, 2] - x0[:, 2], (a - 2 * b).expand(3, 32), rtol=0, atol=1e-5)
    torch.testing.assert_close(nested, both, rtol=0, atol=1e-6)


def test_any_object_with_hook_name_and_hook_fn_is_an_intervention(tiny_model):
    """The ``Intervention`` protocol: a class of one's own (no base class) composes with the library's."""
    class Scale:
        hook_name = HOOK0

        def hook_fn(self, act, hook=None):
            return 2.0 * act

    toks = tokens()
    x0 = resid(tiny_model, toks, HOOK0)
    a = torch.randn(32)
    assert isinstance(Scale(), st.Intervention) and isinstance(st.AddDirection(HOOK0, a), st.Intervention)
    assert not isinstance(object(), st.Intervention)
    both = resid(tiny_model, toks, HOOK0, Scale(), st.AddDirection(HOOK0, a, 1.0))  # in order: 2 x + a
    torch.testing.assert_close(both, 2.0 * x0 + a, rtol=0, atol=1e-5)
    assert [h for h, _ in st.fwd_hooks(tiny_model, Scale())] == [HOOK0]

# --------------------------------------------------------------------------- clamp / ablate
def test_clamp_to_own_value_is_noop_and_clamp_changes_only_that_atom(tiny_model):
    toks = tokens()
    sae = make_sae()
    clean = tiny_model(toks)
    x0 = resid(tiny_model, toks, HOOK0)
    codes = sae.encode(x0).detach()
    # an atom active at position 3 of row 0
    j = int(codes[0, 3].argmax())
    a = float(codes[0, 3, j])
    assert a > 0
    pos = [3, 3, 3]
    own = codes[:, 3, j]
    # clamping to its own value (per row: one call per row) leaves the model unchanged
    for r in range(3):
        with st.clamp_atoms(sae, j, float(own[r]), positions=3).on(tiny_model):
            out = tiny_model(toks)
        torch.testing.assert_close(out[r], clean[r], rtol=0, atol=1e-5)
    # clamping to v changes the residual by exactly (v - a_j) W_dec[j] at the chosen positions only
    x1 = resid(tiny_model, toks, HOOK0, st.clamp_atoms(sae, j, 7.0, positions=pos))
    expect = (7.0 - own).unsqueeze(-1) * sae.W_dec[j].detach()
    torch.testing.assert_close(x1[:, 3] - x0[:, 3], expect, rtol=1e-5, atol=1e-5)
    other = torch.ones(7, dtype=torch.bool)
    other[3] = False
    assert (x1 - x0)[:, other].abs().max() == 0
    # ablation removes exactly the atom's contribution
    x2 = resid(tiny_model, toks, HOOK0, st.ablate_atoms(sae, j, positions=pos))
    torch.testing.assert_close(x2[:, 3] - x0[:, 3], -own.unsqueeze(-1) * sae.W_dec[j].detach(), rtol=1e-5, atol=1e-5)
    # one atom list per prompt ([batch, k] table): each row's own atom is ablated
    table = torch.tensor([[int(codes[r, 3].argmax())] for r in range(3)])
    x3 = resid(tiny_model, toks, HOOK0, st.ablate_atoms(sae, table, positions=pos))
    for r in range(3):
        jr = int(table[r, 0])
        torch.testing.assert_close(x3[r, 3] - x0[r, 3], -codes[r, 3, jr] * sae.W_dec[jr].detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one per prompt"):
        tiny_model.run_with_hooks(toks, fwd_hooks=st.fwd_hooks(tiny_model, st.ablate_atoms(sae, table[:2])))
    # ablating atoms that are inactive everywhere is a no-op
    dead = [int(i) for i in torch.nonzero((codes == 0).all(dim=(0, 1))).flatten()[:3]]
    if dead:
        with st.ablate_atoms(sae, dead).on(tiny_model):
            torch.testing.assert_close(tiny_model(toks), clean, rtol=0, atol=1e-5)


def test_bad_input_gives_clear_errors(tiny_model):
    sae = make_sae()
    with pytest.raises(IndexError, match="d_sae=64"):
        st.clamp_atoms(sae, [64], 1.0)
    with pytest.raises(ValueError, match="one per atom"):
        st.clamp_atoms(sae, [1, 2, 3], [1.0, 2.0])
    with pytest.raises(KeyError, match="Close names"):
        st.fwd_hooks(tiny_model, st.AddDirection("blocks.7.hook_resid_post", torch.ones(32)))
    with pytest.raises(ValueError, match="d=32"):
        tiny_model.run_with_hooks(tokens(), fwd_hooks=st.fwd_hooks(tiny_model, st.AddDirection(HOOK0, torch.ones(5), 1.0)))
    with pytest.raises(ValueError, match="vector"):
        st.AddDirection(HOOK0, torch.ones(2, 32))
    with pytest.raises(TypeError, match="not an intervention"):
        st.fwd_hooks(tiny_model, "add")
    big = make_sae(d_in=16)
    with pytest.raises(ValueError, match="d_in=16"):
        tiny_model.run_with_hooks(tokens(), fwd_hooks=st.fwd_hooks(tiny_model, st.ablate_atoms(big, 0)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("-inf")]])
def test_edit_atoms_rejects_non_finite_values(value):
    with pytest.raises(ValueError, match="finite"):
        st.clamp_atoms(make_sae(), [1, 2], value)


# --------------------------------------------------------------------------- planted direction
def planted_direction(model, token: int) -> torch.Tensor:
    u = model.W_U[:, token].detach().clone()
    return u - u.mean()  # the final LayerNorm removes the mean


def test_planted_direction_steers_logits_the_predicted_way(tiny_model):
    toks = tokens(n=4)
    clean = tiny_model(toks)[:, -1]
    t = int(clean.argmin(-1)[0])  # the least likely token of row 0: steering must lift it to the top
    d = planted_direction(tiny_model, t)
    d = d / d.norm()
    gaps = []
    for alpha in (0.0, 2.0, 8.0, 64.0):
        with st.AddDirection(HOOK1, d, alpha, positions=-1).on(tiny_model):
            out = tiny_model(toks)
        lp = out[:, -1].log_softmax(-1)
        gaps.append(float(lp[:, t].mean().detach()))
        assert torch.equal(out[:, :-1], tiny_model(toks)[:, :-1])  # earlier positions untouched
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0] + 1.0
    with st.AddDirection(HOOK1, d, 64.0, positions=-1).on(tiny_model):
        assert (tiny_model(toks)[:, -1].argmax(-1) == t).all()
    # the same through an SAE whose atom 5 is the planted direction: add, and clamp with the error term
    W = torch.randn(64, 32, generator=torch.Generator().manual_seed(4))
    W[5] = d
    sae = make_sae(hook=HOOK1, W_dec=W)
    with st.add_atoms(sae, 5, 64.0, positions=-1).on(tiny_model):
        assert (tiny_model(toks)[:, -1].argmax(-1) == t).all()
    with st.clamp_atoms(sae, 5, 64.0, positions=-1).on(tiny_model):
        assert (tiny_model(toks)[:, -1].argmax(-1) == t).all()
    # and a negative alpha pushes it down
    with st.AddDirection(HOOK1, planted_direction(tiny_model, int(clean.argmax(-1)[0])), -64.0, positions=-1).on(tiny_model):
        assert int(tiny_model(toks)[0, -1].argmax()) != int(clean.argmax(-1)[0])


def test_hooked_sae_transformer_with_attached_sae(tiny_model):
    """With an SAE spliced in (error term on), interventions act on what flows on, as in a plain model."""
    from sae_lens import HookedSAETransformer

    hst = HookedSAETransformer(tiny_model.cfg).eval()
    hst.load_state_dict(tiny_model.state_dict(), strict=False)
    toks = tokens()
    torch.testing.assert_close(hst(toks), tiny_model(toks))
    sae = make_sae()
    hst.add_sae(sae, use_error_term=True)
    torch.testing.assert_close(hst(toks), tiny_model(toks), rtol=1e-4, atol=1e-4)
    v = torch.randn(32)
    for iv in (st.AddDirection(HOOK0, v, 2.0, positions=[1, 2, 3]), st.clamp_atoms(sae, [3, 9], 4.0, positions=2)):
        with iv.on(hst):
            a = hst(toks)
        with iv.on(tiny_model):
            b = tiny_model(toks)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(a, hst(toks))


# --------------------------------------------------------------------------- selection by meaning
def test_select_atoms_finds_planted_concept_atoms():
    g = torch.Generator().manual_seed(0)
    sae = make_sae(d_in=32, d_sae=64, seed=2)
    n = 600
    labels = [["A", "B", "C"][i % 3] for i in range(n)]
    codes = torch.zeros(n, 64)
    codes[torch.arange(n), torch.randint(0, 64, (n,), generator=g)] = torch.rand(n, generator=g)  # noise atom
    for i, y in enumerate(labels):
        if y == "A":
            codes[i, 11] = 3.0 + torch.rand(1, generator=g).item()
            codes[i, 40] = 1.5
        if y == "B":
            codes[i, 7] = 2.0
    x = codes @ sae.W_dec.detach()
    res = st.select_atoms(sae, x, labels, "A", k=2, codes=codes)
    assert [r.atom for r in res] == [11, 40]
    assert res[0].score > res[1].score > 0 and res[0].freq_in == 1.0 and res[0].freq_out < 0.05
    # through the SAE's own encoder (near-orthogonal W_dec: encoding recovers the codes well enough)
    res2 = st.select_atoms(sae, x, labels, "B", k=1)
    assert res2[0].atom == 7
    dom = st.diff_of_means(x, labels, "A")
    torch.testing.assert_close(dom, x[[y == "A" for y in labels]].mean(0) - x.mean(0))
    v = st.concept_direction(sae, res)
    assert torch.nn.functional.cosine_similarity(v, dom, dim=0) > 0.9
    with pytest.raises(ValueError, match="no activation has label"):
        st.select_atoms(sae, x, labels, "Z")
    with pytest.raises(ValueError, match="labels"):
        st.select_atoms(sae, x, labels[:-1], "A")


# --------------------------------------------------------------------------- selection by effect, amplitudes, swap
def test_select_atoms_by_effect_finds_the_planted_output_atom(tiny_model):
    """Known answer: atom 13 of a random SAE is the direction that raises token t's logit
    (W_U[:, t], centred); selection by effect must rank it first, selection by activation cannot
    see it (it never fires); an atom pointing the other way scores lowest."""
    toks = tokens(n=6, seq=6)
    t = int(tiny_model(toks)[:, -1].mean(0).argmin())
    W = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    W[13] = planted_direction(tiny_model, t)
    W[21] = -planted_direction(tiny_model, t)
    sae = make_sae(hook=HOOK1, W_dec=W)
    ids = toks.tolist()
    grad = st.output_gradient(tiny_model, HOOK1, ids, [2] * len(ids), t, span="from")
    typical = torch.ones(64)
    top = st.select_atoms_by_effect(sae, grad, typical, k=3)
    assert top[0].atom == 13 and top[0].score > top[1].score > 0
    every = st.select_atoms_by_effect(sae, grad, typical, k=64)
    assert every[-1].atom == 21 and every[-1].score < 0
    # the score is first-order: adding the atom at a small strength changes log p(t) by about score
    with st.add_atoms(sae, 13, 0.05, positions=[2] * len(ids), span="from").on(tiny_model):
        lp = tiny_model(toks)[:, -1].log_softmax(-1)[:, t]
    gain = float((lp - tiny_model(toks)[:, -1].log_softmax(-1)[:, t]).mean().detach())
    assert gain == pytest.approx(0.05 * top[0].score, rel=0.1)
    # with answers the objective is the margin over each row's own answer: still atom 13
    ans = tiny_model(toks)[:, -1].argmax(-1).tolist()
    assert st.select_atoms_by_effect(sae, st.output_gradient(tiny_model, HOOK1, ids, [2] * 6, t, ans), typical, k=1)[0].atom == 13
    with pytest.raises(ValueError, match="one position"):
        st.output_gradient(tiny_model, HOOK1, ids, [2], t)
    with pytest.raises(ValueError, match="grad must be"):
        st.select_atoms_by_effect(sae, grad[:5], typical)


def test_atom_amplitudes_values_and_ceiling():
    codes = torch.zeros(100, 4)
    codes[:50, 0] = torch.linspace(1.0, 3.0, 50)   # median 2
    codes[:10, 1] = 5.0
    # atom 2 never fires; atom 3 fires once
    codes[0, 3] = 0.5
    typ, ceil = st.atom_amplitudes(codes, ceiling_q=0.99)
    assert typ[0] == pytest.approx(2.0, abs=0.05) and typ[1] == 5.0 and typ[3] == 0.5
    assert ceil[0] == pytest.approx(2.98, abs=0.02) and bool((ceil >= typ).all())
    assert typ[2] == typ[[0, 1, 3]].median()  # a dead atom gets the median unit
    v = st.atom_values(typ, [0, 1], 1.4, ceil)
    assert v[0] == pytest.approx(2.0 * 1.4, abs=0.1) and v[1] == 5.0  # capped at its in-distribution ceiling
    assert st.atom_values(typ, [1], 2.0)[0] == 10.0  # no ceiling: plain multiple
    with pytest.raises(ValueError, match="strength"):
        st.atom_values(typ, [0], float("nan"))
    with pytest.raises(ValueError, match="ever active"):
        st.atom_amplitudes(torch.zeros(5, 3))


def test_swap_atoms_ablates_source_and_clamps_target(tiny_model):
    sae = make_sae()
    toks = tokens()
    x = resid(tiny_model, toks, HOOK0)
    codes = sae.encode(x)
    src = [int(j) for j in codes[0, 3].topk(2).indices]
    tgt = [j for j in range(64) if j not in src][:2]
    x1 = resid(tiny_model, toks, HOOK0, st.swap_atoms(sae, src + [tgt[0]], tgt, 2.5, positions=3))
    c = codes[:, 3].detach()
    W = sae.W_dec.detach()
    # exactly: targets set to 2.5 (also the one listed as a source), sources set to 0, error term kept
    expect = (2.5 - c[:, tgt]) @ W[tgt] + (0.0 - c[:, src]) @ W[src]
    torch.testing.assert_close(x1[:, 3] - x[:, 3], expect, rtol=1e-4, atol=1e-4)
    assert (x1 - x)[:, [0, 1, 2, 4, 5, 6]].abs().max() == 0


def test_transfer_atoms_moves_the_concept_amplitude_and_leaves_absent_concepts_alone(tiny_model):
    sae = make_sae()
    toks = tokens()
    x = resid(tiny_model, toks, HOOK0)
    c = sae.encode(x)[:, 3].detach()
    W = sae.W_dec.detach()
    pool = [int(j) for j in c[0].topk(4).indices]          # the "concept": row 0's strongest atoms
    tgt = [j for j in range(64) if c[:, j].max() == 0][:2]   # target atoms inactive here
    ref = float((c[0, pool] * W[pool].norm(dim=-1)).sum()) / 2  # row 0 carries twice the typical amplitude
    iv = st.TransferAtoms(sae, pool + [tgt[0]], tgt, [1.5, 3.0], ref, positions=3, hook_name=HOOK0)
    x1 = resid(tiny_model, toks, HOOK0, iv)
    g = (c[:, pool] * W[pool].norm(dim=-1)).sum(-1) / ref    # [batch]; row 0: exactly 2
    assert float(g[0]) == pytest.approx(2.0, rel=1e-5)
    # exactly: the pool ablated, the targets set to g * values, the error term kept, position 3 only
    expect = -c[:, pool] @ W[pool] + (g.unsqueeze(1) * torch.tensor([1.5, 3.0])) @ W[tgt]
    torch.testing.assert_close(x1[:, 3] - x[:, 3], expect, rtol=1e-4, atol=1e-4)
    assert (x1 - x)[:, [0, 1, 2, 4, 5, 6]].abs().max() == 0
    # a ceiling caps the target's values
    capped = resid(tiny_model, toks, HOOK0, st.TransferAtoms(sae, pool, tgt, [1.5, 3.0], ref, torch.full((64,), 0.5),
                                                             positions=3, hook_name=HOOK0))
    expect = -c[:, pool] @ W[pool] + torch.minimum(g.unsqueeze(1) * torch.tensor([1.5, 3.0]), torch.tensor(0.5)) @ W[tgt]
    torch.testing.assert_close(capped[:, 3] - x[:, 3], expect, rtol=1e-4, atol=1e-4)
    # where no pool atom is active, nothing changes (g = 0: no source to move)
    idle = [j for j in range(64) if c[:, j].max() == 0 and j not in tgt][:3]
    same = resid(tiny_model, toks, HOOK0, st.TransferAtoms(sae, idle, tgt, 5.0, ref, positions=3, hook_name=HOOK0))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-6)
    # a fraction moves the activation that part of the way (pool kept at 1 - lam, targets lam of the way)
    for lam in (0.0, 0.5, 1.5):
        part = resid(tiny_model, toks, HOOK0, st.TransferAtoms(sae, pool + [tgt[0]], tgt, [1.5, 3.0], ref, positions=3,
                                                               hook_name=HOOK0, fraction=lam))
        torch.testing.assert_close(part - x, lam * (x1 - x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="fraction"):
        st.TransferAtoms(sae, pool, tgt, 1.0, 1.0, hook_name=HOOK0, fraction=-0.5)
    with pytest.raises(ValueError, match="ref_mass"):
        st.TransferAtoms(sae, pool, tgt, 1.0, 0.0, hook_name=HOOK0)
    with pytest.raises(IndexError, match="d_sae=64"):
        st.TransferAtoms(sae, pool, [64], 1.0, 1.0, hook_name=HOOK0)


def planted_values(n: int, seed: int, d: int = 24, n_val: int = 4):
    """Orthonormal atoms; atom ``y`` carries label value ``y`` (0..n_val-1) at a random amplitude in
    [2, 3], plus small positive noise on the other 8 atoms. ``(sae, W, x, y, amp)``."""
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:12]
    sae = make_sae(d_in=d, d_sae=12, W_dec=W)
    y = [i % n_val for i in range(n)]
    amp = 2.0 + torch.rand(n, generator=g)
    x = amp.unsqueeze(1) * W[torch.tensor(y)] + 0.3 * torch.rand(n, 8, generator=g) @ W[n_val:]
    return sae, W, x, y, amp


def test_concept_pool_finds_every_values_planted_atom():
    sae, W, x, y, amp = planted_values(200, seed=3)
    pool, ref = st.concept_pool(sae, x, y, k=1)
    assert pool == [0, 1, 2, 3]
    assert ref == pytest.approx(float(amp.mean()), rel=1e-4)  # each row carries its value's atom at its amplitude
    with pytest.raises(ValueError, match=">= 2 label values"):
        st.concept_pool(sae, x, [0] * 200, k=1)


def test_error_term_kept_dropped_or_projected_off_a_subspace(tiny_model):
    sae = make_sae()
    toks = tokens()
    x = resid(tiny_model, toks, HOOK0)
    c = sae.encode(x)[:, 3].detach()
    recon = sae.decode(c).detach()
    e = x[:, 3] - recon
    j = int(c[0].argmax())
    edited = c.clone()
    edited[:, j] = 4.0
    new = sae.decode(edited).detach()
    kept = resid(tiny_model, toks, HOOK0, st.clamp_atoms(sae, j, 4.0, positions=3))
    torch.testing.assert_close(kept[:, 3], new + e, rtol=1e-4, atol=1e-4)
    # "drop": the edited reconstruction replaces the activation (the error term is gone)
    dropped = resid(tiny_model, toks, HOOK0, st.EditAtoms(sae, [j], 4.0, positions=3, hook_name=HOOK0, error="drop"))
    torch.testing.assert_close(dropped[:, 3], new, rtol=1e-4, atol=1e-4)
    # a basis: only the error term's part in its span is removed
    U = torch.linalg.qr(torch.randn(32, 5, generator=torch.Generator().manual_seed(4)))[0]
    proj = resid(tiny_model, toks, HOOK0, st.EditAtoms(sae, [j], 4.0, positions=3, hook_name=HOOK0, error=U))
    torch.testing.assert_close(proj[:, 3], new + e - (e @ U) @ U.T, rtol=1e-4, atol=1e-4)
    assert float(((proj[:, 3] - new).detach() @ U).abs().max()) < 1e-4           # no error left in span(U)
    for out in (dropped, proj):                                         # other positions untouched
        assert (out - x)[:, [0, 1, 2, 4, 5, 6]].abs().max() == 0
    with pytest.raises(ValueError, match="'keep', 'drop'"):
        st.EditAtoms(sae, [j], 1.0, hook_name=HOOK0, error="zero")
    with pytest.raises(ValueError, match=r"d_in=32"):
        st.TransferAtoms(sae, [0], [1], 1.0, 1.0, hook_name=HOOK0, error=torch.zeros(16, 2))


def test_concept_subspace_is_the_span_of_the_planted_value_directions():
    d, n_val = 24, 4
    sae, W, x, y, amp = planted_values(400, seed=5, d=d, n_val=n_val)
    U = st.concept_subspace(sae, x, y, pool=[0, 1, 2, 3])
    assert U.shape == (d, n_val - 1)                                   # 4 centred class means: rank 3
    torch.testing.assert_close(U.T @ U, torch.eye(n_val - 1), rtol=0, atol=1e-5)
    R = amp.unsqueeze(1) * W[torch.tensor(y)]                         # each row's planted value part
    means = torch.stack([R[v::n_val].mean(0) for v in range(n_val)]) - R.mean(0)
    torch.testing.assert_close(means @ U @ U.T, means, rtol=0, atol=1e-4)  # where the values differ: inside
    torch.testing.assert_close(U - W[:4].T @ (W[:4] @ U), torch.zeros_like(U), rtol=0, atol=1e-5)  # and no more
    assert float((W[4:] @ U).abs().max()) < 1e-4                      # the other atoms are outside it
    with pytest.raises(ValueError, match="pool is empty"):
        st.concept_subspace(sae, x, y, pool=[])
    with pytest.raises(ValueError, match=">= 2 label values"):
        st.concept_subspace(sae, x, [0] * 400, pool=[0, 1])


def test_gated_direction_adds_where_the_gate_units_are_silent_and_closes_where_they_fire():
    sae = make_sae(d_in=8, d_sae=8, W_dec=torch.eye(8))  # encode(x) = relu(x) per unit: the gate's mass is known
    v = torch.arange(8, dtype=torch.float32)
    iv = st.GatedDirection(HOOK0, v, sae, gate=[0, 1], tau=2.0, alpha=3.0, positions=[1, 0, 2])
    act = torch.zeros(3, 4, 8)
    act[0, 1, 0] = 2.0                     # gate mass 2 = tau: shut
    act[1, 0, 1] = 1.0                     # mass 1: half open
    act[2, 2, 5] = 4.0                     # only a unit outside the gate fires: open
    out = iv.hook_fn(act)
    assert torch.equal(out[0], act[0])
    assert torch.allclose(out[1, 0], act[1, 0] + 1.5 * v) and torch.allclose(out[2, 2], act[2, 2] + 3.0 * v)
    untouched = torch.ones(3, 4, dtype=torch.bool)
    untouched[[0, 1, 2], [1, 0, 2]] = False
    assert torch.equal(out[untouched], act[untouched])  # other positions never move
    with pytest.raises(ValueError, match="tau"):
        st.GatedDirection(HOOK0, v, sae, gate=[0], tau=0.0)
    with pytest.raises(IndexError, match="gate"):
        st.GatedDirection(HOOK0, v, sae, gate=[9], tau=1.0)


def test_gated_edit_spends_any_edit_where_the_gate_units_are_silent():
    sae = make_sae(d_in=8, d_sae=8, W_dec=torch.eye(8))  # encode(x) = relu(x) per unit
    edit = st.EditAtoms(sae, [6], 5.0, positions=0, hook_name=HOOK0)  # unit 6 clamped to 5 at position 0
    iv = st.GatedEdit(edit, sae, gate=[0, 1], tau=2.0)
    act = torch.zeros(3, 2, 8)
    act[..., 6] = 1.0
    act[0, 0, 0] = 2.0                     # gate mass 2 = tau: shut
    act[1, 0, 1] = 1.0                     # mass 1: half open
    out, full = iv.hook_fn(act), edit.hook_fn(act)
    assert float((full[:, 0] - act[:, 0]).abs().max()) > 3.9  # the edit itself moves every row's position 0
    assert torch.equal(out[0], act[0])
    assert torch.allclose(out[1, 0], act[1, 0] + 0.5 * (full[1, 0] - act[1, 0]))
    assert torch.allclose(out[2], full[2])  # the gate's units are silent: the edit's own change
    assert torch.equal(out[:, 1], act[:, 1])  # a position the edit leaves alone never moves
    assert iv.hook_name == HOOK0
    with pytest.raises(TypeError, match="intervention"):
        st.GatedEdit(object(), sae, gate=[0], tau=1.0)


def test_gate_atoms_finds_the_units_of_the_other_kind_and_its_closing_amplitude():
    sae = make_sae(d_in=8, d_sae=8, W_dec=torch.eye(8))
    g = torch.Generator().manual_seed(0)
    x_in = torch.zeros(50, 8)
    x_in[:, 3] = 1 + torch.rand(50, generator=g)                     # the edited kind: unit 3
    x_out = torch.zeros(40, 8)
    x_out[:, 5], x_out[:, 6] = 1 + torch.rand(40, generator=g), 2.0  # the other kind: units 5 and 6
    gate, tau = st.gate_atoms(sae, x_in, x_out, m=2, q=0.25)
    assert sorted(gate) == [5, 6]
    assert tau == pytest.approx(float((x_out[:, 5] + x_out[:, 6]).quantile(0.25)))
    with pytest.raises(ValueError, match="silent"):
        st.gate_atoms(sae, x_in, torch.zeros(5, 8), m=2)
