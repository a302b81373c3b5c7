"""Writes the tutorial notebooks (run: python tutorials/make_notebooks.py). Edit here, not in the .ipynb."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

INSTALL = '''# Install (Colab or a fresh environment). Skipped when sae_atoms is already importable.
# SAE_ATOMS_SOURCE may name a git URL or a local checkout of sae_atoms.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("sae_atoms") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", os.environ.get("SAE_ATOMS_SOURCE", "sae-atoms")])'''

SETTINGS = '''import os
import torch
# MODEL: the embedded SmolLM2-135M works offline. Where the hub is reachable, try "gpt2" or
# "google/gemma-2-2b" (then pick a LAYER that the model has).
MODEL = os.environ.get("SAE_ATOMS_MODEL", "smollm2-135m")
SMALL = os.environ.get("SAE_ATOMS_TUTORIAL_SMALL") == "1"   # the test suite runs the notebooks small
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"'''


def nb(title: str, cells: list) -> nbformat.NotebookNode:
    n = new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [new_markdown_cell(title), new_code_cell(INSTALL), new_code_cell(SETTINGS)] + cells
    return n


aip = nb("""# 1. The representation shift and the atomic inner product (AIP)

Atom Theory (arXiv 2509.20784) observes that Euclidean angles between a model's activations are
centred far from 90°: a dominant shared direction (the *representation shift*). Under the atomic
inner product `<u, v>_S = u^T S v` with `S = (E[m m^T])^-1` they re-centre at 90°. This notebook
measures both on subject-token activations of fact prompts, fits the metric on **train** entities
and checks it on **held-out** entities.""", [
    new_code_cell('''from sae_atoms.models import load_model
from sae_atoms.data import fact_prompts
from sae_atoms.activations import extract

model = load_model(MODEL, device=DEVICE)
LAYER = model.cfg.n_layers * 2 // 5
HOOK = f"blocks.{LAYER}.hook_resid_post"
facts = fact_prompts(n_cities=60 if SMALL else 600, relations=["city_country"])
acts = extract(model, facts, HOOK, position="subject_last")
train, heldout = acts.select(split="train"), acts.select(split="heldout")
print(len(train), "train and", len(heldout), "held-out activations of", HOOK)
print(train.rows[0]["prompt"], "->", repr(train.rows[0]["token_str"]))'''),
    new_markdown_cell("Fit the metric (uncentred second moment, float64, streaming) on the train split only."),
    new_code_cell('''from sae_atoms.aip import AIPMetric

metric = AIPMetric.fit(train.x(), kind="uncentered")
print(metric)
print("condition number", metric.condition_number, "effective rank", metric.effective_rank)'''),
    new_code_cell('''def centroid(angles):
    """Mean of the pairwise angles (degrees), the 'angular centroid'."""
    iu = torch.triu_indices(len(angles), len(angles), 1)
    return angles[iu[0], iu[1]].mean().item()

x_tr, x_ho = train.x()[:300], heldout.x()[:300]
unit = torch.nn.functional.normalize(x_ho, dim=1)
euclid = torch.rad2deg(torch.arccos((unit @ unit.T).clamp(-1, 1)))
print(f"Euclid centroid (held-out): {centroid(euclid):.1f} deg")
print(f"AIP centroid (train):       {centroid(metric.angles(x_tr)):.1f} deg")
print(f"AIP centroid (held-out):    {centroid(metric.angles(x_ho)):.1f} deg")
assert centroid(euclid) < 80 and abs(centroid(metric.angles(x_tr)) - 90) < 3  # the shift, and its correction'''),
    new_markdown_cell("The AIP is also a hook: `attach` adds `HOOK.hook_aip` to the model, so `run_with_cache` returns whitened activations while the logits stay unchanged."),
    new_code_cell('''from sae_atoms.aip import aip_hook

prompt = "The city of Tokyo is located in the country of"
clean = model(prompt)
with aip_hook(model, HOOK, metric):
    logits, cache = model.run_with_cache(prompt, names_filter=[HOOK, HOOK + ".hook_aip"])
print("logits unchanged:", torch.allclose(clean, logits))
print("whitened == metric.whiten(raw):", torch.allclose(cache[HOOK + ".hook_aip"], metric.whiten(cache[HOOK]), atol=1e-4))'''),
    new_markdown_cell("A histogram of the angles, Euclid vs AIP (held-out pairs). `sae-atoms geometry --layers all` does this for every layer and writes `results.json` and plots."),
    new_code_cell('''import matplotlib.pyplot as plt
iu = torch.triu_indices(len(x_ho), len(x_ho), 1)
plt.hist(euclid[iu[0], iu[1]].numpy(), bins=60, alpha=0.6, label="Euclid")
plt.hist(metric.angles(x_ho)[iu[0], iu[1]].numpy(), bins=60, alpha=0.6, label="AIP (fitted on train)")
plt.axvline(90, color="k", lw=0.8); plt.xlabel("angle between activations (deg)"); plt.legend(); plt.show()'''),
])

if __name__ == "__main__":
    for name, book in {"01_representation_shift_and_aip.ipynb": aip}.items():
        nbformat.write(book, HERE / name)
        print("wrote", HERE / name)
