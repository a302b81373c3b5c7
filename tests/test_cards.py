"""Tests of sae_atoms.cards: the numbers on a card (tiny random model), the HTML, the command, and
the site rendered by a real browser (headless Chromium) on the embedded model."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import datasets
import pytest
import torch

from sae_atoms import cards
from sae_atoms.activations import ActivationSet
from sae_atoms.cards import compute as C
from sae_atoms.cards import render as R
from sae_atoms.cli import main
from tests.steering.test_steering import make_sae as unit_sae

HOOK = "blocks.0.hook_resid_post"
CHROMIUM = "/usr/bin/chromium"


def make_sae(d_in: int = 32, d_sae: int = 48, hook: str = HOOK, threshold: float = 0.5):
    """The steering tests' JumpReLU SAE (unit decoder rows, W_enc = W_dec^T) with one threshold for every unit."""
    sae = unit_sae(d_in, d_sae, hook)
    with torch.no_grad():
        sae.threshold.fill_(threshold)
    return sae


def token_rows(n: int = 6, seq: int = 12, vocab: int = 50) -> list[list[int]]:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(1)).tolist()


@pytest.fixture
def site(tiny_model):
    sae = make_sae()
    cfg = C.CardConfig(n_cards=4, top_k=3, progress=False)
    return cards.Site(tiny_model, sae, HOOK, C.observe_rows(tiny_model, sae, HOOK, token_rows(), cfg), cfg, "tiny")


# --------------------------------------------------------------------------- the numbers
def test_observations_are_the_codes_of_each_token_at_the_hook(tiny_model):
    sae, rows = make_sae(), token_rows()
    obs = C.observe_rows(tiny_model, sae, HOOK, rows, C.CardConfig(batch_size=4, progress=False))
    _, cache = tiny_model.run_with_cache(torch.tensor(rows), names_filter=HOOK)
    want = sae.encode(cache[HOOK][:, 1:].reshape(-1, 32))  # every token but the first of each row
    got = torch.zeros_like(want)
    got[obs.row_of * 11 + obs.pos_of - 1] = obs.codes
    assert len(obs.codes) == 6 * 11 and torch.allclose(got, want, atol=1e-5)


def test_top_contexts_are_the_argmax_and_the_window_shades_their_row(site):
    obs, unit = site.obs, 7
    idx, vals = C.top_contexts(obs, unit, 3)
    assert vals[0] == obs.codes[:, unit].max() and idx[0] == obs.codes[:, unit].argmax()
    assert torch.all(vals[:-1] >= vals[1:])
    ids, acts, at = C.window(obs, site.table, int(idx[0]), unit, site.cfg)
    r, p = int(obs.row_of[idx[0]]), int(obs.pos_of[idx[0]])
    assert ids[at] == obs.rows[r][p] and acts[at] == pytest.approx(float(vals[0]))
    for q in range(p - at, p - at + len(ids)):  # every shaded token is that token's own code (BOS: 0)
        want = 0.0 if q == 0 else float(obs.codes[(obs.row_of == r) & (obs.pos_of == q), unit][0])
        assert acts[q - (p - at)] == pytest.approx(want)


def test_promoted_and_suppressed_tokens_are_the_decoder_row_through_the_unembedding(tiny_model):
    sae = make_sae()
    up, down = C.logit_effects(sae, tiny_model, 5, 4)
    w = (sae.W_dec[5] @ tiny_model.W_U).detach()
    assert [t for t, _ in up] == torch.topk(w, 4).indices.tolist()
    assert [t for t, _ in down] == torch.topk(-w, 4).indices.tolist()
    assert up[0][1] == pytest.approx(float(w.max())) and down[0][1] == pytest.approx(float(w.min()))


def test_bound_check_orthogonal_directions_meet_it_and_coherent_ones_do_not():
    ortho = torch.eye(4)
    codes = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    k, mu, ok = C.bound_check(codes, ortho)
    assert k.tolist() == [3, 1] and mu.tolist() == [0.0, 0.0] and ok.tolist() == [True, True]
    coherent = torch.tensor([[1.0, 0.0], [0.5, 0.75 ** 0.5]])  # |cos| 0.5 > 1/(2*2-1)
    k, mu, ok = C.bound_check(torch.tensor([[1.0, 1.0]]), coherent)
    assert k.tolist() == [2] and mu.tolist() == pytest.approx([0.5]) and ok.tolist() == [False]
    codes = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    three = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.75 ** 0.5, 0.0], [0.0, 0.0, 1.0]])
    pairs = C.cofiring(codes, three, 0, 5)
    assert [(p["unit"], p["count"], p["k"], p["ok"]) for p in pairs] == [(1, 2, 2.0, False), (2, 1, 2.0, True)]


def test_a_given_metric_is_the_aip_geometry_of_the_site(site):
    from sae_atoms.aip import AIPMetric
    from sae_atoms.evals.units import unit_directions

    assert list(site.geo) == ["raw"]  # a jumprelu SAE carries no metric
    metric = AIPMetric.robust(torch.randn(500, 32, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.1, 3, 32))
    other = cards.Site(site.model, site.sae, HOOK, site.obs, site.cfg, "tiny", metric)
    assert list(other.geo) == ["aip", "raw"] and other.geometry == "aip"
    assert torch.allclose(other.geo["aip"], unit_directions(site.sae.W_dec.detach(), metric))
    assert torch.allclose(other.stats["coherence"], C.max_abs_cos(other.geo["aip"]))
    assert not torch.allclose(other.stats["coherence"], site.stats["coherence"])


def test_nearest_and_coherence_by_abs_cos():
    Dn = torch.tensor([[1.0, 0.0], [-0.9, 0.19 ** 0.5], [0.0, 1.0]])
    assert [j for j, _ in C.nearest(Dn, 0, 2)] == [1, 2]
    assert C.max_abs_cos(Dn, block=2).tolist() == pytest.approx([0.9, 0.9, 0.19 ** 0.5])


def test_purity_and_choice_of_units():
    codes = torch.tensor([[1.0, 0.0, 2.0], [2.0, 0.0, 1.0], [3.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    share, label = C.purity(codes, {"country": ["A", "A", "B", ""]}, top_k=3)["country"]
    assert share.tolist() == pytest.approx([2 / 3, 1.0, 1.0]) and label == ["A", "B", "A"]
    stats = {"firing_rate": torch.tensor([0.5, 0.0, 0.9, 0.2])}
    assert C.choose_units(stats, 3, (1, 2)) == [2, 0, 3, 1]
    with pytest.raises(ValueError, match="out of range"):
        C.choose_units(stats, 2, (4,))
    with pytest.raises(ValueError, match="fewer tokens"):  # dense codes beyond evals.MAX_DENSE_CODES
        C.check_size(1 << 20, 1 << 10)
    C.check_size(1 << 10, 1 << 10)


def test_steering_preview_batched_equals_one_prompt_at_a_time(tiny_model):
    from sae_atoms.steering import clamp_atoms, fwd_hooks

    sae, prompts = make_sae(), [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11]]
    clean = C.steer_preview(tiny_model, sae, HOOK, 3, None, prompts)
    assert clean == [int(tiny_model(torch.tensor([p]))[0, -1].argmax()) for p in prompts]
    steered = C.steer_preview(tiny_model, sae, HOOK, 3, 40.0, prompts)
    hooks = fwd_hooks(tiny_model, clamp_atoms(sae, 3, 40.0, positions=-1, hook_name=HOOK))
    assert steered == [int(tiny_model.run_with_hooks(torch.tensor([p]), fwd_hooks=hooks)[0, -1].argmax()) for p in prompts]
    assert steered != clean  # a strong clamp changes the next token


# --------------------------------------------------------------------------- the HTML
def test_write_cards_writes_the_index_and_the_chosen_cards(site, tmp_path):
    index = cards.write_cards(site, tmp_path / "cards")
    units = C.choose_units(site.stats, 4)
    assert sorted(p.name for p in index.parent.glob("unit_*.html")) == sorted(f"unit_{u}.html" for u in units)
    page = index.read_text()
    assert page.count("class='unit-row'") == 48 and all(f"href='unit_{u}.html'" in page for u in units)
    card = (index.parent / f"unit_{units[0]}.html").read_text()
    for section in ("histogram", "contexts", "logits", "neighbours", "cofiring", "steering"):
        assert f"<section class='{section}'>" in card
    assert "http" not in page + card  # offline: nothing fetched
    assert cards.is_cards_dir(index.parent)


def test_text_is_escaped_and_show_renders_inline(site):
    html = R.shaded(["<script>", "&"], [1.0, 0.0], 0, 1.0)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp;" in html
    view = cards.show(site.sae, 3, model=site.model, source=site.obs, cfg=site.cfg)
    assert "class='atom-card' data-unit='3'" in view._repr_html_()


# --------------------------------------------------------------------------- the command
def test_cards_command_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    assert main(["cards", str(tmp_path / "none"), "--corpus", "human-en", "--out", str(tmp_path / "other")]) == 2
    assert "non-empty folder this tool did not write" in capsys.readouterr().err
    assert main(["cards", str(tmp_path / "none"), "--corpus", "human-en", "--out", str(tmp_path / "o")]) == 2
    assert "is not an SAE folder" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["cards", str(tmp_path), "--units", "a,b", "--corpus", "x", "--out", str(tmp_path / "o")]) == 2
    assert "--units takes unit indices" in capsys.readouterr().err
    assert main(["cards", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "one of the arguments --activations --corpus is required" in capsys.readouterr().err
    make_sae(8, 16, "blocks.3.hook_resid_post").save_model(str(tmp_path / "sae"))
    ActivationSet({HOOK: torch.zeros(2, 8)}, datasets.Dataset.from_dict({"prompt": ["a", "b"]})).save(tmp_path / "acts")
    assert main(["cards", str(tmp_path / "sae"), "--activations", str(tmp_path / "acts"), "--out", str(tmp_path / "o")]) == 2
    assert "not the SAE's hook 'blocks.3.hook_resid_post'" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.real_model
@pytest.mark.slow
def test_cards_command_on_a_plain_saelens_jumprelu_sae_and_a_text_corpus(real_model, monkeypatch, tmp_path):
    sae = make_sae(576, 128, "blocks.12.hook_resid_post", threshold=2.0)
    sae.save_model(str(tmp_path / "jumprelu"))
    text = tmp_path / "text.txt"
    text.write_text("The city of Paris is in France. It has a river and many bridges.\n\n" * 30)
    monkeypatch.setattr("sae_atoms.models.load_model", lambda *a, **k: real_model)
    from sae_atoms.aip import AIPMetric

    AIPMetric.robust(torch.randn(2000, 576, generator=torch.Generator().manual_seed(0))).save(tmp_path / "metric")
    rc = main(["cards", str(tmp_path / "jumprelu"), "--corpus", str(text), "--out", str(tmp_path / "out"),
               "--tokens", "256", "--n-cards", "3", "--units", "5", "--device", "cpu", "--metric", str(tmp_path / "metric")])
    assert rc == 0
    assert (tmp_path / "out" / "unit_5.html").is_file() and len(list((tmp_path / "out").glob("unit_*.html"))) == 4
    card = (tmp_path / "out" / "unit_5.html").read_text()
    assert "Paris" in card or "bridges" in card or "never fires" in card
    assert "nearest by |cos| (aip)" in card and "nearest by |cos| (raw)" in card


@pytest.mark.real_model
@pytest.mark.slow
def test_corpus_observations_leave_out_special_tokens(real_model, tmp_path):
    """Packed corpus rows hold a BOS between documents; no observed token is a special token."""
    from sae_atoms.cards.compute import CardConfig, observe_corpus
    from sae_atoms.evals.downstream import special_ids

    text = tmp_path / "t.txt"
    text.write_text("Short document one.\n\nAnother short one, here.\n\n" * 40)
    obs = observe_corpus(real_model, make_sae(576, 16, "blocks.12.hook_resid_post", threshold=0.0),
                         "blocks.12.hook_resid_post", str(text), CardConfig(n_tokens=512, context_size=64, progress=False))
    special = torch.tensor(special_ids(real_model))
    seen = torch.tensor([obs.rows[r][p] for r, p in zip(obs.row_of.tolist(), obs.pos_of.tolist())])
    assert len(seen) > 300 and not torch.isin(seen, special).any()
    assert torch.isin(torch.tensor([t for r in obs.rows for t in r[1:]]), special).any()  # BOS inside the rows


# --------------------------------------------------------------------------- a real browser
def _render(url: str, png: Path) -> str:
    """Screenshot ``url`` to ``png`` and return the rendered DOM (headless Chromium)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"]
    subprocess.run(args + [f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
    return subprocess.run(args + ["--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout


def _not_blank(png: Path) -> float:
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.shape[0] >= 800 and img.shape[1] >= 1100
    return float(img[..., :3].std())


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser: {CHROMIUM} is absent (apt-get install chromium)")
def test_a_browser_renders_the_index_and_a_card_of_trained_atoms(real_model, real_acts, tmp_path):
    from sae_atoms.training import train_on_activations, training_config

    sae = train_on_activations(real_acts, training_config("tsae_aip", 576, 256), steps=30, batch_size=128, progress=False)
    site = cards.site_for(real_model, sae, real_acts, cfg=C.CardConfig(n_cards=3, progress=False), name="atoms")
    index = cards.write_cards(site, tmp_path / "cards")
    unit = C.choose_units(site.stats, 1)[0]
    dom = _render(index.as_uri(), tmp_path / "index.png")
    assert dom.count('class="unit-row"') == 256 and f'href="unit_{unit}.html"' in dom
    assert _not_blank(tmp_path / "index.png") > 0.02
    dom = _render((index.parent / f"unit_{unit}.html").as_uri(), tmp_path / "card.png")
    for section in ("histogram", "contexts", "logits", "purity", "neighbours", "cofiring", "steering"):
        assert f'<section class="{section}">' in dom
    assert '<svg class="hist"' in dom and dom.count('class="ctx"') >= 1 and "aip" in dom
    assert _not_blank(tmp_path / "card.png") > 0.02
    clicked = index.parent / "clicked.html"  # the index with a click on "label purity": sorted, highest first
    clicked.write_text(index.read_text().replace("</body>", "<script>document.querySelector(\"th[data-col='purity']\")"
                                                            ".click()</script></body>"))
    order = [float(v) for v in re.findall(r'<tr class="unit-row">(?:<td[^>]*>.*?</td>){4}<td data-v="([^"]+)"',
                                          _render(clicked.as_uri(), tmp_path / "clicked.png"))]
    assert len(order) == 256 and order == sorted(order, reverse=True) and order[0] > order[-1]
    if shutil.os.environ.get("SAE_ATOMS_SHOTS"):  # keep the screenshots (the report's)
        for name in ("index.png", "card.png"):
            shutil.copy(tmp_path / name, Path(shutil.os.environ["SAE_ATOMS_SHOTS"]) / name)
