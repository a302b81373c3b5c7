"""Writes the tutorial notebooks (run: python tutorials/make_notebooks.py). Edit here, not in the .ipynb."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

INSTALL = '''# Install (Colab or a fresh environment); skipped when sae_atoms is already importable. sae_atoms is not on
# PyPI: set SAE_ATOMS_SOURCE to its wheel (sae_atoms-<version>-py3-none-any.whl, from `python -m build` in
# a clone), its git URL ("sae-atoms @ git+https://<your-host>/<path>.git") or a checkout; see the README,
# "Install without a clone". An installed torch (Colab's) is kept: pip is asked for that same version.
import importlib, importlib.metadata, importlib.util, os, subprocess, sys
if importlib.util.find_spec("sae_atoms") is None:
    source = os.environ.get("SAE_ATOMS_SOURCE", "")
    todo = ("set SAE_ATOMS_SOURCE to a sae_atoms wheel, its git URL (\\"sae-atoms @ git+https://<your-host>/<path>.git\\") "
            "or a checkout of its repository, then rerun this cell")
    if not source:
        raise SystemExit(f"sae_atoms is not installed and is not on PyPI: {todo}.")
    keep = [f"torch=={importlib.metadata.version('torch')}"] if importlib.util.find_spec("torch") else []
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", source, *keep], capture_output=True, text=True)
    if pip.returncode != 0:
        said = ([l for l in pip.stderr.splitlines() if l.startswith("ERROR")] or ["no error line"])[-1][:200]
        raise SystemExit(f"pip could not install sae_atoms from SAE_ATOMS_SOURCE={source!r} ({said}): {todo}.")
    importlib.invalidate_caches()'''

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

train = nb("""# 2. Training `tsae_aip` with the SAELens runner, and evaluating its atoms

`import sae_atoms` registers the architectures `tsae` and `tsae_aip` with SAELens, so SAELens's own
`LanguageModelSAETrainingRunner` trains them from a config with `architecture="tsae_aip"`. Here the
runner reads a small local text set (no hub); the metric is estimated from the runner's first
activation batches and saved inside the SAE.""", [
    new_code_cell('''import datasets
import sae_atoms  # registers tsae / tsae_aip
from sae_lens import LanguageModelSAERunnerConfig, SAE
from sae_lens.registry import get_sae_training_class
from sae_atoms.models import load_model
from sae_atoms.data import fact_prompts
from sae_atoms.runners import build_runner

model = load_model(MODEL, device=DEVICE)
LAYER = model.cfg.n_layers * 2 // 5
HOOK = f"blocks.{LAYER}.hook_resid_post"
facts = fact_prompts(n_cities=40 if SMALL else 400)
text = datasets.Dataset.from_dict({"text": [f"{r['prompt']} {r['target']}." for r in facts]})
TSAEAIPConfig = get_sae_training_class("tsae_aip")[1]  # = sae_atoms.TSAEAIPTrainingSAEConfig
print(TSAEAIPConfig.architecture(), len(text), "text rows")'''),
    new_code_cell('''cfg = LanguageModelSAERunnerConfig(
    sae=TSAEAIPConfig(d_in=model.cfg.d_model, d_sae=4 * model.cfg.d_model, l0_coefficient=0.05, n_batches_for_metric=4),
    model_name=MODEL, hook_name=HOOK, dataset_path="", is_dataset_tokenized=False, streaming=False,
    context_size=32, training_tokens=4_000 if SMALL else 200_000, train_batch_size_tokens=128 if SMALL else 1024,
    store_batch_size_prompts=8, n_batches_in_buffer=4, device=DEVICE, output_path="tsae_aip_sae",
    checkpoint_path="checkpoints", lr=1e-3,
)
runner = build_runner(cfg, model=model, dataset=text)   # SAELens's runner, wandb off, metric fitted first
sae = runner.run()
print(type(sae).__name__, "trained; saved to", cfg.output_path)'''),
    new_markdown_cell("The saved SAE loads with SAELens's own loader (the registry finds `tsae_aip`), and splices into the model."),
    new_code_cell('''loaded = SAE.load_from_disk("tsae_aip_sae", device=DEVICE)
prompt = "The city of Tokyo is located in the country of"
clean = model(prompt)
logits, cache = model.run_with_cache_with_saes(prompt, saes=[loaded], use_error_term=True)
print("unedited run with the error term equals the clean model:", torch.allclose(clean, logits, atol=1e-4))
n_active = int((cache[HOOK + ".hook_sae_acts_post"][0, -1] > 0).sum())
print(f"active atoms at the last token: {n_active} of {loaded.cfg.d_sae} ({n_active / loaded.cfg.d_sae:.1%})")'''),
    new_markdown_cell("""How many atoms fire is the SAE's L0. This run trains with a fixed `l0_coefficient` (SAELens's
setting, no L0 target) on a few thousand tokens, so nothing holds it to a chosen sparsity: a large
fraction of active atoms means the penalty has not yet made it sparse, and its R^2 and q* below are
those of a dense code. To compare units at a chosen sparsity, train with a target L0:
`train_on_activations(x, cfg, target_l0=16)` (as `sae-atoms frontier` and `sae-atoms reproduce` do);
the L0 column below is the mean over held-out activations."""),
    new_markdown_cell("Evaluate the atoms against neurons on subject-token activations of held-out entities: faithfulness R^2, L0, coherence mu in the AIP, and the two readings of the stability q*."),
    new_code_cell('''from sae_atoms.activations import extract
from sae_atoms import evals

acts = extract(model, facts, HOOK, position="subject_last")
heldout = acts.select(split="heldout")
labels = {c: heldout.labels(c) for c in ("country", "continent")}
rows = {}
for name, units in {"neurons": evals.neurons(model.cfg.d_model), "atoms (tsae_aip)": loaded}.items():
    rows[name] = evals.evaluate_units(units, heldout, metric=evals.find_metric(loaded), labels=labels, hook=HOOK)
print(evals.format_table(rows))
assert rows["neurons"]["r2"] > 0.999  # the identity basis reconstructs exactly'''),
])

steer = nb("""# 3. Steering with atoms in a TransformerLens run

Atoms are SAE units, so they can be added, clamped or ablated in a running model. Here we train a
small `tsae_aip` on subject-token activations, pick atoms for a country by their *effect* on the
answer (the gradient of the target's log-probability, on training prompts: `output_gradient` +
`select_atoms_by_effect`, after Arad, Mueller & Belinkov, arXiv 2505.20063) and by activation
(`select_atoms`), and clamp them on at the subject's last token of a prompt about a city elsewhere,
in the atoms' own units (`atom_amplitudes`, `atom_values`: a multiple of each atom's mean code on
the target's subjects, capped in distribution), against the
difference-of-means vector (the strong baseline). `sae-atoms steer` runs the full, measured
experiment (8 targets, 2 seeds, success at matched KL on unrelated prompts, strengths chosen on a
validation split); its result on the default run is the README's steering table, with standard
errors. One prompt, as here, illustrates the interventions; it cannot tell which method steers
more often, so each result below is printed beside the clean rank, whichever way it moved.""", [
    new_code_cell('''from sae_atoms.models import load_model, last_token_logits, first_token_ids
from sae_atoms.data import fact_prompts
from sae_atoms.activations import extract
from sae_atoms.training import train_on_activations, training_config
from sae_atoms import steering

model = load_model(MODEL, device=DEVICE)
LAYER = model.cfg.n_layers * 2 // 5
HOOK = f"blocks.{LAYER}.hook_resid_post"
facts = fact_prompts(n_cities=150 if SMALL else 1000, relations=["city_country"])
acts = extract(model, facts, HOOK, position="subject_last")
train = acts.select(split="train")
cfg = training_config("tsae_aip", model.cfg.d_model, 4 * model.cfg.d_model)
cfg.metadata.hook_name = HOOK
sae = train_on_activations(train.x(), cfg, steps=300 if SMALL else 3000, device=DEVICE)'''),
    new_code_cell('''TARGET = "China"  # many of the most populous cities are Chinese: enough subjects to select atoms
atoms = steering.select_atoms(sae, train, "country", TARGET, k=8)
print("atoms most associated with", TARGET, ":", [(a.atom, round(a.score, 3)) for a in atoms])'''),
    new_code_cell('''prompt = "The city of Madrid is located in the country of"
subject_pos = model.to_tokens(prompt).shape[1] - 1 - len(model.to_str_tokens(" is located in the country of", prepend_bos=False))
dom = steering.diff_of_means(train, "country", TARGET)
target_tok = first_token_ids(model, [TARGET])[0]

moved = {}  # intervention -> rank of the target with it (`clean`: the rank without)

def report(name, hooks):
    logits = last_token_logits(model, [prompt], fwd_hooks=hooks)[0]
    rank = int((logits > logits[target_tok]).sum()) + 1
    versus = f" (clean {clean}: {'better' if rank < clean else 'worse' if rank > clean else 'unchanged'})" if hooks else ""
    print(f"{name:>18}: top-1 {model.tokenizer.decode(logits.argmax())!r:>12}, rank of {TARGET!r}: {rank}{versus}")
    if hooks:
        moved[name] = rank
    return rank

# selection by effect, on training prompts about cities in other countries (never the test prompt)
rows = [r for r in facts.to_list() if r["split"] == "train" and r["country"] not in (TARGET, "")][:16]
ids = steering.prompt_token_ids(model, [r["prompt"] for r in rows])
from sae_atoms.activations import subject_token_positions
pos = subject_token_positions(model, [r["prompt"] for r in rows], [r["subject_start"] for r in rows], [r["subject_end"] for r in rows])
grad = steering.output_gradient(model, HOOK, ids, pos, target_tok, first_token_ids(model, [r["country"] for r in rows]), span="at")
codes = steering.encode_batched(sae, train.x())
typical, ceiling = steering.atom_amplitudes(codes)
by_effect = [a.atom for a in steering.select_atoms_by_effect(sae, grad, typical, k=8)]
print("atoms by effect:", by_effect)
# strength in the atoms' own units: s x each atom's mean code on the target's subjects, capped at its
# in-distribution ceiling (the 99th percentile of its non-zero codes); at the subject's last token only
target_mean = codes[torch.tensor([y == TARGET for y in train.labels("country")])].mean(0).clamp(min=0)
clean = report("clean", [])
# atoms by activation: in units of their mean code on the target's subjects; atoms by effect were scored
# for adding each at its typical amplitude (select_atoms_by_effect), so they are clamped in those units
# (an atom that rarely fires on the target's subjects would otherwise be clamped near 0, i.e. ablated)
for name, chosen, unit in (("atoms by activation", [a.atom for a in atoms], target_mean), ("atoms by effect", by_effect, typical)):
    values = steering.atom_values(unit, chosen, 12.0, ceiling)
    report(name, steering.fwd_hooks(model, steering.clamp_atoms(sae, chosen, values, positions=subject_pos)))
# transfer: ablate whichever country atoms are active at the subject (no source label needed) and put
# their amplitude on the target's atoms (TransferAtoms; the pool is every country's top atoms)
pool, ref_mass = steering.concept_pool(sae, train, "country", k=8, codes=codes)
values = steering.atom_values(target_mean, by_effect, 16.0)
report("atoms transfer", steering.fwd_hooks(model, steering.TransferAtoms(sae, pool, by_effect, values, ref_mass, ceiling,
                                                                        positions=subject_pos)))
# the SAE's error term still holds what it did not encode of the source country; remove its part in
# the countries' subspace (the span of their mean reconstructions from the pool's atoms) as well
countries = steering.concept_subspace(sae, train, "country", pool, codes=codes)
print("country subspace:", tuple(countries.shape))
report("atoms transfer, error term's country part removed",
       steering.fwd_hooks(model, steering.TransferAtoms(sae, pool, by_effect, values, ref_mass, ceiling,
                                                        positions=subject_pos, error=countries)))
with_dom = report("diff of means", steering.fwd_hooks(model, steering.AddDirection(HOOK, dom, 3.0, positions=subject_pos)))
print(f"moved {TARGET!r} up on this prompt: {[n for n, r in moved.items() if r < clean]}; "
      f"did not: {[n for n, r in moved.items() if r >= clean]}")
assert with_dom < clean  # the difference of means (the strong baseline) moves the target up
# One prompt is an illustration, not a measurement: whether atoms steer as often depends on the SAE (its
# width, data and training); `sae-atoms steer` measures it on many prompts, at matched side effect, with
# the strength chosen on a validation split.'''),
    new_markdown_cell("Interventions are context managers too, and compose; they are removed on exit, even after an exception. Ablating the atoms of the subject's true country lowers the model's probability of it."),
    new_code_cell('''prompt2 = "The city of Shanghai is located in the country of"
pos2 = model.to_tokens(prompt2).shape[1] - 1 - len(model.to_str_tokens(" is located in the country of", prepend_bos=False))
china_atoms = [a.atom for a in atoms]  # the atoms selected for China above
with steering.steering(model, steering.ablate_atoms(sae, china_atoms, positions=pos2, span="from")):
    ablated = model(prompt2)[0, -1].log_softmax(-1)[target_tok].item()
clean_lp = model(prompt2)[0, -1].log_softmax(-1)[target_tok].item()
print(f"log p(' China' | Shanghai): clean {clean_lp:.3f}, China's atoms ablated {ablated:.3f}")
# the hooks are gone again: the model is unchanged after the with-block
assert torch.allclose(model(prompt2)[0, -1].log_softmax(-1)[target_tok], torch.tensor(clean_lp), atol=1e-5)'''),
])

if __name__ == "__main__":
    books = {"01_representation_shift_and_aip.ipynb": aip, "02_train_tsae_aip_with_saelens.ipynb": train,
             "03_steering_with_atoms.ipynb": steer}
    for name, book in books.items():
        nbformat.write(book, HERE / name)
        print("wrote", HERE / name)
