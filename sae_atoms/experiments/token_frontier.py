"""The token benchmark: every unit kind trained on a token stream by SAELens's multi-SAE runner and
judged by SAELens's ``run_evals`` on held-out documents, at matched L0.

This is where SAELens users train SAEs (a stream of text tokens, not the ~5,000 subject tokens of
the paper's setting). One ``MultiSAETrainingRunner`` pass (``sae_atoms.runners.build_runner``:
one forward pass of the model feeds every SAE) trains, at one hook and width ``expansion x d``,
each unit kind of ``TOKEN_UNITS`` at each target L0:

    atoms                        tsae_aip (metric fitted from the runner's first batches), in
                                 partial whitening ``units.ATOMS_ALPHA_TOKENS`` (``atoms_alpha``)
    atoms_stable                 the same with the stability objective (``units``), its token
                                 stream's design and weight ``STABILITY_TOKENS``
    tsae                         the same TSAE in raw space
    features_jumprelu            SAELens jumprelu (expected_average_only_in)
    features_jumprelu_whitened   SAELens jumprelu + its covariance_whitening
    features_topk / _batchtopk   SAELens topk / batchtopk, k = target
    features_matryoshka          SAELens matryoshka_batchtopk, k = target
    atoms_onb (by name)          orthonormal atoms of the reference AIP, built, not trained (``token_onb``)

Sparsity: atoms and tsae train batch top-k by default (``atoms_training="batchtopk"``: the
batch's ``target_l0 x batch`` largest codes, BatchTopK's recipe; ``"topk"``: each sample's
``target_l0``; ``"threshold"`` gives them the jumprelu recipe). Why: in this regime top-k training
lifted atoms' CE-loss score at every target, and per-sample top-k left the massive tokens
(``sae_atoms.massive``), which fire a large share of the atoms once matched thresholds replace
top-k, reconstructed with an error larger than themselves; batch top-k trains the decoder on them
(the designs and their rows are in the closing notes of issue 21). On planted data top-k is the
recipe under which seeds recover the same dictionary (``units``: ``atoms_topk``). jumprelu kinds
(and atoms under ``"threshold"``) train with SAELens's quadratic L0 loss toward the target, their
thresholds calibrated on the input of their first step as the trainer normalises it
(``training.calibrate_at_first_step``).
After training every SAE with thresholds (atoms and tsae; batchtopk kinds are saved as jumprelu)
gets one common threshold factor that sets its mean L0 to the target on *validation* documents
(``training.match_l0``), held-out documents disjoint from those it is evaluated on. Top-k holds
``k`` exactly. Every unit trains at one learning rate (``lr``; ``--unit-lr`` for a unit's own).

Data (``token_data``): the corpus's documents (``human-en`` by default: its ``train`` split to train,
its ``heldout`` split to validate and evaluate; another corpus is split by a hash of each document)
are shuffled with the seed, so every source is in every slice, and packed into rows of
``context_size`` tokens (BOS first, documents separated by BOS, as SAELens's text pipeline does).
The held-out documents alternate between the validation and the evaluation set.

Evaluation, on the evaluation documents: SAELens's ``run_evals`` (CE-loss score with zero
ablation, KL score, explained variance, L0; special tokens excluded), and the project's own on the
same tokens' activations (BOS excluded): R^2 in the AIP, coherence mu raw and in the AIP, q* (a)
and (b), dead fraction. The AIP here is one reference metric for every unit (``AIPMetric.robust``,
alpha = 1, fitted on the first ``ref_tokens`` training tokens).

``sae-atoms token-frontier`` runs it; ``--tokens`` scales it (``--device cuda`` on a GPU: the model,
the activation store and the SAEs go there). Memory is the runner's buffer plus the evaluation
activations, not ``--tokens``. ``--atoms-variant NAME=FIELD:VALUE,...`` trains designs of atoms (other
tsae_aip config fields) in the same pass, as ``atoms_NAME``, with their CE difference to atoms paired;
``--unit-lr UNIT=LR`` gives a unit its own learning rate (``runners.set_learning_rate``). A killed run
resumes from the runner's last checkpoint (``--resume``). Each SAE starts from a seed of its own name
and the run's seed (``runners.seeded_saes``), so a unit's row does not depend on which other units,
variants or twins share the pass (the batches are the same whenever the pass holds atoms, whose
metric batches come first, and a unit with normalised input, whose estimate batches come next).
With ``stability`` the twins train in passes of their own (``passes``), one kind of twin each, over
the same batches: a pass's memory grows with the SAEs it holds.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sae_atoms.aip import AIPMetric
from sae_atoms.argtypes import named_fields, unit_lr
from sae_atoms.corpus import hook_activations, split_documents, token_rows
from sae_atoms.experiments.token_onb import build_onb, check_onb, is_built
from sae_atoms.io import atomic_dir, write_json
from sae_atoms.massive import MASSIVE_RATIO, massive_share
from sae_atoms.saes.orthonormal import CONTRASTS
from sae_atoms.units import ATOMS_ALPHA_TOKENS, ONB, STABILITY_TOKENS, atoms_variants, is_atoms, unit_config

TOKEN_UNITS = ("atoms", "atoms_stable", "tsae", "features_jumprelu", "features_jumprelu_whitened", "features_topk",
               "features_batchtopk", "features_matryoshka")
MORE_TOKEN_UNITS = (ONB,)  # by name only (--units)
DEFAULT_TARGETS = (16, 32, 64, 128)
DEFAULT_HOOK = "blocks.12.hook_resid_post"


@dataclass(frozen=True)
class TokenFrontierConfig:
    """Settings of ``run_token_frontier``. Token counts are rounded up to whole rows of ``context_size``."""

    hook: str = DEFAULT_HOOK
    units: tuple[str, ...] = TOKEN_UNITS
    targets: tuple[float, ...] = DEFAULT_TARGETS
    expansion: float = 4.0            # width as a multiple of the hook's width, every unit alike
    corpus: str = "human-en"
    tokens: int = 90_000              # training tokens (the runner's training_tokens): the CPU default
    context_size: int = 128
    batch_tokens: int = 512           # the runner's train_batch_size_tokens
    lr: float = 3e-3                  # every unit's learning rate (--unit-lr for one unit's own)
    atoms_training: str = "batchtopk" # how atoms and tsae hold their L0 in training: ATOMS_TRAINING
    atoms_alpha: float = ATOMS_ALPHA_TOKENS  # partial whitening S^alpha of the atoms (1: the full AIP)
    val_tokens: int = 4096            # held-out validation tokens the final L0 is matched on
    eval_tokens: int = 2048           # held-out evaluation tokens (run_evals's figures and ours)
    heldout_doc_tokens: int = 64      # tokens per held-out document at most (a random window of each)
    ref_tokens: int = 90_000          # training-stream tokens the reference AIP is fitted on (atoms_onb learns on them)
    eval_batch_prompts: int = 4        # rows per run_evals pass (each logits tensor: rows x context x vocab floats)
    norm_batches: int = 20            # first batches the input normalisations (and atoms' metric) are estimated on
    n_checkpoints: int = 2
    drop_massive: bool = False        # leave massive tokens (norm > 10x the median: sae_atoms.massive) out of training
    stability: bool = False           # also train each SAE's twins: another initialisation, and twice the width
    seed: int = 0
    atoms_variants: tuple = ()        # ((name, ((field, value), ...)), ...): atoms designs trained beside, as atoms_<name>
    unit_lrs: tuple = ()              # ((unit, lr), ...): units trained at their own learning rate, not lr
    onb_refine: int = 10              # Procrustes steps of atoms_onb's ICA basis at each target (token_onb)
    onb_contrast: str = "logcosh"     # FastICA contrast of atoms_onb's basis (saes.orthonormal.CONTRASTS)


ATOMS_TRAINING = {  # TokenFrontierConfig.atoms_training -> the tsae / tsae_aip config fields it sets
    "batchtopk": {"topk_training": True, "topk_mode": "batch"},
    "topk": {"topk_training": True, "topk_mode": "sample"},
    "threshold": {"topk_training": False},
}
ATOMS_TRAINING_TEXT = {  # ... and how it reads (the CLI's help, the report)
    "batchtopk": "batch top-k (the batch's target-L0 x batch largest codes, BatchTopK's recipe; thresholds matched after)",
    "topk": "top-k (each token's target-L0 largest codes; thresholds matched after)",
    "threshold": "with the quadratic L0 loss on learned thresholds",
}
TOKEN_FIELDS = {"atoms_stable": STABILITY_TOKENS}  # a unit's token-stream fields, on the atoms recipe (not its own)
TWINS = {"_init2": 1.0, "_wide": 2.0}  # stability twins of an SAE: name suffix -> width factor (both another init)


def twin_widths(c: TokenFrontierConfig) -> dict[str, float]:
    """Each SAE name's suffix -> width factor: the SAE itself, and its ``TWINS`` with ``c.stability``."""
    return {"": 1.0, **(TWINS if c.stability else {})}


def row_units(c: TokenFrontierConfig) -> tuple[str, ...]:  # c.units and the atoms design variants, atoms_<name>
    return tuple(c.units) + tuple(f"atoms_{n}" for n, _ in c.atoms_variants)


def trained_units(c: TokenFrontierConfig) -> tuple[str, ...]:
    """``row_units`` that the runner trains (all but the built ``atoms_onb``)."""
    return tuple(u for u in row_units(c) if not is_built(u))


def designs(c: TokenFrontierConfig) -> dict[str, dict[str, Any]]:
    """Each atoms variant's unit name -> its tsae_aip config fields (``units.atoms_variants``)."""
    return atoms_variants(c.atoms_variants)


def trained_config(c: TokenFrontierConfig, unit: str, d: int, d_sae: int, target: float) -> Any:
    """``unit_config`` of a trained unit (a kind of ``c.units`` or an atoms variant); atoms (``units.is_atoms``
    and the variants) estimate their metric on the runner's first ``norm_batches`` batches, as the input
    normalisations are; they and tsae train with ``c.atoms_training``'s recipe."""
    variant, recipe = designs(c).get(unit), ATOMS_TRAINING[c.atoms_training]
    if unit == "tsae":
        return unit_config(unit, d, d_sae, target, c.hook, **recipe)
    if not is_atoms(unit) and variant is None:
        return unit_config(unit, d, d_sae, target, c.hook)
    fields = {"n_batches_for_metric": c.norm_batches, "aip_alpha": c.atoms_alpha} | recipe | TOKEN_FIELDS.get(unit, {})
    base = "atoms" if variant is not None or unit in TOKEN_FIELDS else unit  # token fields replace the kind's own
    return unit_config(base, d, d_sae, target, c.hook, **fields | (variant or {}))


def sae_name(unit: str, target: float) -> str:
    return f"{unit}_l0_{target:g}"


# --------------------------------------------------------------------------- data
def token_data(model: Any, c: TokenFrontierConfig) -> dict[str, Any]:
    """``{"train", "val", "eval", "ref"}``: ``datasets.Dataset``s with a ``tokens`` column (rows of
    ``context_size``), from seeded shuffles of the train and held-out documents; the held-out
    documents alternate between ``val`` and ``eval``, each giving one random window of at most
    ``heldout_doc_tokens`` tokens; ``ref`` is the head of ``train``. ``train`` holds as many tokens
    that are not special as the runner reads (``runners.tokens_read``: its training tokens and
    what it reads before and beside them), so that it never reads a row twice."""
    import datasets

    from sae_atoms.evals.downstream import special_ids
    from sae_atoms.runners import tokens_read

    rng = random.Random(c.seed)
    train, held = split_documents(c.corpus, "train"), split_documents(c.corpus, "heldout")
    rng.shuffle(train)
    rng.shuffle(held)
    window = (c.heldout_doc_tokens, random.Random(c.seed + 1))
    need = max(tokens_read(runner_config(c, model, Path(), "cpu")) if trained_units(c) else 0, c.ref_tokens)
    rows = {"train": token_rows(train, model, c.context_size, need, "training documents", drop=special_ids(model)),
            "val": token_rows(held[0::2], model, c.context_size, c.val_tokens, "validation documents", window),
            "eval": token_rows(held[1::2], model, c.context_size, c.eval_tokens, "evaluation documents", window)}
    rows["ref"] = rows["train"][:math.ceil(c.ref_tokens / c.context_size)]
    return {k: datasets.Dataset.from_dict({"tokens": v}) for k, v in rows.items()}


# --------------------------------------------------------------------------- training
def runner_config(c: TokenFrontierConfig, model: Any, out: Path, device: str, resume: str | None = None,
                  suffixes: tuple[str, ...] | None = None) -> Any:
    """The ``MultiSAETrainingRunnerConfig`` of one pass training every unit at every target, as the
    SAEs and twins named by ``suffixes`` (of ``twin_widths``; None: all of them)."""
    from sae_lens import LoggingConfig, MultiSAETrainingRunnerConfig

    from sae_atoms.corpus import hook_dim

    d = hook_dim(model, c.hook) or int(model.cfg.d_model)
    width = int(round(c.expansion * d))
    saes = {sae_name(u, t) + suffix: trained_config(c, u, d, int(round(width * f)), t)
            for t in c.targets for u in trained_units(c) for suffix, f in twin_widths(c).items()
            if suffixes is None or suffix in suffixes}  # twins: another init
    rows_per_batch, steps = max(1, c.batch_tokens // c.context_size), c.tokens // c.batch_tokens
    return MultiSAETrainingRunnerConfig(
        saes=saes, hook_names=c.hook, model_name=model.cfg.model_name, dataset_path="", streaming=False,
        exclude_special_tokens=True, context_size=c.context_size, prepend_bos=True,
        training_tokens=c.tokens, train_batch_size_tokens=c.batch_tokens, store_batch_size_prompts=rows_per_batch,
        n_batches_in_buffer=buffer_batches(c), n_batches_for_norm_estimate=c.norm_batches, lr=c.lr,
        lr_warm_up_steps=max(1, steps // 20), lr_decay_steps=steps // 5, device=device, seed=c.seed,
        n_checkpoints=c.n_checkpoints, checkpoint_path=str(out / "checkpoints"), resume_from_checkpoint=resume,
        output_path=str(out / "trained"), n_eval_batches=0, logger=LoggingConfig(log_to_wandb=False))


def buffer_batches(c: TokenFrontierConfig) -> int:
    """8, or enough that the runner's mixing buffer (n_batches_in_buffer * context_size tokens) holds two batches."""
    return max(8, math.ceil(2 * c.batch_tokens / c.context_size))


def latest_checkpoint(out: Path) -> str | None:
    """The runner checkpoint with the most training samples under ``out/checkpoints`` (None if none)."""
    found = [p for p in (out / "checkpoints").glob("*/*") if p.is_dir() and p.name.isdigit()]
    return str(max(found, key=lambda p: int(p.name))) if found else None


def passes(c: TokenFrontierConfig) -> list[tuple[str, ...]]:
    """The runner passes of a run, each the ``twin_widths`` suffixes it trains: the SAEs, then each
    kind of twin in a pass of its own. A pass's memory grows with the SAEs it trains (their weights,
    Adam moments, each step's codes), so with ``stability`` the peak is the wide twins' pass, not the
    three kinds together; each extra pass runs the model over the training tokens once more. The
    batches are the same in every pass (the same units, the same seeded stream), and each SAE starts
    from a seed of its own name, so a twin equals the one a joint pass would train."""
    return [(suffix,) for suffix in twin_widths(c)]


def pass_dir(out: Path, suffixes: tuple[str, ...]) -> Path:
    """Where a pass keeps its checkpoints and trained SAEs: ``out`` for the SAEs, ``out/pass_<twin>`` for twins."""
    return out if suffixes == ("",) else out / ("pass" + "".join(suffixes))


def train_units(c: TokenFrontierConfig, model: Any, train: Any, out: Path, device: str,
                resume: bool = False) -> tuple[dict[str, Any], int]:
    """Train every unit at every target (and their twins, ``passes``) with the multi-SAE runner;
    returns the inference SAEs by name and how many rows of ``train`` the SAEs' pass read (more than
    it has: it read some twice). With ``resume`` a finished pass is loaded, the others resume from
    their last checkpoint."""
    import gc

    saes, rows = {}, []
    for suffixes in passes(c):
        got, n = _train_pass(c, model, train, pass_dir(out, suffixes), device, suffixes, resume)
        saes |= got
        rows.append(n)
        gc.collect()  # the runner's SAEs, optimizers and store go before the next pass starts
    return saes, rows[0]


def _train_pass(c: TokenFrontierConfig, model: Any, train: Any, out: Path, device: str, suffixes: tuple[str, ...],
                resume: bool) -> tuple[dict[str, Any], int]:
    """One runner pass (``train_units``); ``out/pass.json``, written once its SAEs are saved, marks it done."""
    import json

    from sae_lens import SAE

    from sae_atoms.training import calibrate_at_first_step

    cfg = runner_config(c, model, out, device, latest_checkpoint(out) if resume else None, suffixes)
    done = out / "pass.json"
    finished = json.loads(done.read_text()) if resume and done.exists() else {}
    if finished.get("saes") != sorted(cfg.saes):
        lrs = {sae_name(u, t) + k: lr for u, lr in c.unit_lrs for t in c.targets for k in suffixes}
        runner = seeded_runner(cfg, model, train, c.seed, lrs, massive_ratio=MASSIVE_RATIO if c.drop_massive else None)
        if cfg.resume_from_checkpoint is None:  # threshold units held to their target by the quadratic L0 loss
            for sae in runner.saes.values():
                if getattr(sae.cfg, "jumprelu_sparsity_loss_mode", None) == "quadratic":
                    calibrate_at_first_step(sae, sae.cfg.target_l0)
        runner.run()
        finished = {"saes": sorted(cfg.saes), "rows_read": int(runner.activations_store.n_dataset_processed)}
        write_json(finished, done)
    return {name: SAE.load_from_disk(str(out / "trained" / name), device=device) for name in cfg.saes}, finished["rows_read"]


def seeded_runner(cfg: Any, model: Any, train: Any, seed: int, lrs: dict[str, float] | None = None,
                  massive_ratio: float | None = None) -> Any:
    """``runners.build_runner`` with each SAE initialised from its own seed (``runners.seeded_saes``:
    a unit's row does not depend on which units share the pass) and the global RNG, which shuffles
    the activation store's buffer, seeded first (else it depends on what ran before, e.g. whether a
    main job's earlier stages came from its cache)."""
    from sae_atoms.runners import build_runner

    torch.manual_seed(seed)
    return build_runner(cfg, model=model, dataset=train, lrs=lrs, massive_ratio=massive_ratio, init_seed=seed)


def _remove_training_files(c: TokenFrontierConfig, out: Path) -> None:
    """The runners' own outputs and checkpoints, once the matched SAEs are saved (they only serve a resume)."""
    import shutil

    for name in ("trained", "checkpoints"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "pass.json").unlink(missing_ok=True)
    for suffixes in passes(c)[1:]:  # a twins' pass folder holds its training files alone
        shutil.rmtree(pass_dir(out, suffixes), ignore_errors=True)


# --------------------------------------------------------------------------- evaluation
def evaluate_saes(saes: dict[str, Any], model: Any, eval_rows: Any, x_eval: torch.Tensor, ref: AIPMetric,
                 c: TokenFrontierConfig, progress: bool = True) -> dict[str, dict[str, Any]]:
    """``run_evals``'s figures (CE-loss and KL scores in shared passes, L0 and explained variance on
    the cached activations: ``sae_atoms.evals.downstream``) and ``evaluate_units`` in the reference AIP."""
    from sae_atoms.evals import evaluate_units
    from sae_atoms.evals.downstream import downstream_scores, sparsity_and_variance
    from sae_atoms.evals.evaluate import BINDING_KEYS

    vs_atoms = {sae_name(u, t): sae_name("atoms", t) for t in c.targets for u in row_units(c) if u != "atoms"}
    down = downstream_scores(saes, model, eval_rows, c.hook, c.eval_batch_prompts, progress=progress,
                             reference=vs_atoms if "atoms" in c.units else None)
    out = {}
    for name, sae in saes.items():
        ours = evaluate_units(sae, x_eval, ref, hook=c.hook)
        out[name] = sparsity_and_variance(sae, x_eval) | {
            "ce_loss_score": down[name]["ce_loss_score"], "kl_div_score": down[name]["kl_div_score"],
            "r2_aip": ours["r2_aip"], "mu": ours["mu_aip"], "mu_raw": ours["mu_raw"], "q_star_a": ours["q_star_a"],
            "q_star_b": ours["q_star_b"], "dead_frac": ours["dead_frac"]} | {k: ours.get(k) for k in BINDING_KEYS} | {
            k: down[name][k] for k in ("ce_loss_score_se", "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation")} | {
            k.replace("ce_loss_score_vs_ref", "ce_minus_atoms"): v for k, v in down[name].items() if "_vs_ref" in k}
    return out


def match_to_target(sae: Any, x_val: torch.Tensor, target: float) -> float | None:
    """The SAE's mean L0 on ``x_val`` set to ``target`` by one common threshold factor (SAEs with
    thresholds: jumprelu, tsae, tsae_aip, and batchtopk kinds saved as jumprelu); returns the
    factor, None for SAEs without thresholds (top-k holds k itself)."""
    from sae_atoms.training import match_l0

    if not hasattr(sae, "threshold"):
        return None
    return match_l0(sae, x_val.to(sae.W_dec.device), float(target))


# --------------------------------------------------------------------------- the run
def run_token_frontier(model: Any, cfg: TokenFrontierConfig | None = None, *, out: Path, device: str = "cpu",
                       resume: bool = False, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Train (one runner pass), match L0 on validation documents, evaluate on evaluation documents;
    returns ``{"settings", "rows", "seconds"}`` (rows: ``token_reading.ROW_KEYS`` and a few more) and saves the
    matched SAEs to ``out/saes/<unit>_l0_<T>`` (SAELens format)."""
    from tqdm.auto import tqdm

    from sae_atoms.evals.downstream import sparsity_and_variance
    from sae_atoms.evals.stability import stability_columns

    c = replace(cfg or TokenFrontierConfig(), **overrides)
    check_config(c)
    t0 = time.time()
    data = token_data(model, c)
    x_val, x_eval = (hook_activations(model, data[k]["tokens"], c.hook) for k in ("val", "eval"))
    ref = AIPMetric.robust(x_ref := hook_activations(model, data["ref"]["tokens"], c.hook))
    seconds, t0 = {"data": time.time() - t0}, time.time()
    saes = build_onb(x_ref, c, ref, {t: sae_name(ONB, t) for t in c.targets}, device) if ONB in c.units else {}
    del x_ref  # atoms_onb is built on the reference AIP's training tokens, in it (token_onb)
    trained, rows_read = train_units(c, model, data["train"], out, device, resume) if trained_units(c) else ({}, 0)
    saes |= trained
    seconds["train"] = time.time() - t0
    t0 = time.time()
    units, design = row_units(c), designs(c)
    named = [(sae_name(u, t) + suffix, t) for t in c.targets for u in units for suffix in twin_widths(c)]
    factors = {name: match_to_target(saes[name], x_val, t)
               for name, t in tqdm(named, desc="token frontier: match L0", unit="SAE", disable=not progress)}
    for t, u in [(t, u) for t in c.targets for u in units]:
        with atomic_dir(out / "saes" / sae_name(u, t)) as tmp:
            saes[sae_name(u, t)].save_model(str(tmp))
    _remove_training_files(c, out)
    main = {n: sae for n, sae in saes.items() if not n.endswith(tuple(TWINS))}
    scores = evaluate_saes(main, model, data["eval"]["tokens"], x_eval, ref, c, progress)
    rows = [{"unit": u, "target_l0": t} | scores[sae_name(u, t)] | {"threshold_factor": factors[sae_name(u, t)],
                                                                    "l0_val": sparsity_and_variance(saes[sae_name(u, t)], x_val)["l0"]}
            | (stability_columns(*(saes[sae_name(u, t) + k] for k in ("", "_init2", "_wide")), x_eval, ref) if c.stability else {})
            | ({"design": design[u]} if u in design else {})
            for t in c.targets for u in units]
    seconds["eval"] = time.time() - t0
    return {"settings": _settings(c, data, x_val, x_eval, model) | {"train_rows_read": rows_read}, "rows": rows,
            "metric": ref.provenance(), "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def check_config(c: TokenFrontierConfig) -> None:
    bad = sorted(set(c.units) - set(TOKEN_UNITS + MORE_TOKEN_UNITS))
    if bad:
        raise ValueError(f"unknown token-frontier units {bad}; choose from {list(TOKEN_UNITS + MORE_TOKEN_UNITS)}.")
    if not c.targets or any(t <= 0 for t in c.targets):
        raise ValueError(f"targets {list(c.targets)} must be positive L0 values.")
    for name in ("tokens", "context_size", "batch_tokens", "val_tokens", "eval_tokens", "ref_tokens", "eval_batch_prompts",
                 "heldout_doc_tokens", "norm_batches"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name}={getattr(c, name)} must be >= 1.")
    if c.atoms_training not in ATOMS_TRAINING:
        raise ValueError(f"atoms_training={c.atoms_training!r}: choose from {sorted(ATOMS_TRAINING)}.")
    if not 0.0 <= c.atoms_alpha <= 1.0:
        raise ValueError(f"atoms_alpha={c.atoms_alpha} must be in [0, 1] (1 = the full AIP, 0 = Euclid).")
    check_onb(c)
    if c.batch_tokens > c.tokens:
        raise ValueError(f"batch_tokens={c.batch_tokens} exceeds tokens={c.tokens}: the runner would take no step.")
    bad = sorted({u for u, lr in c.unit_lrs if u not in trained_units(c) or not lr > 0})
    if bad:
        raise ValueError(f"unit learning rates of {bad}: name trained units ({list(trained_units(c))}) with a positive lr.")
    for u in designs(c):
        try:
            trained_config(c, u, 8, 16, 1.0)
        except (TypeError, ValueError) as e:
            raise ValueError(f"atoms variant {u!r}: {e} (its fields are tsae_aip config fields)") from e


def _settings(c: TokenFrontierConfig, data: dict[str, Any], x_val: torch.Tensor, x_eval: torch.Tensor,
              model: Any) -> dict[str, Any]:
    return asdict(c) | {"units": list(c.units), "targets": list(c.targets), "model": model.cfg.model_name,
                        "atoms_variants": designs(c), "unit_lrs": dict(c.unit_lrs),
                        "unit_fields": {u: TOKEN_FIELDS[u] for u in c.units if u in TOKEN_FIELDS},
                        "width": int(round(c.expansion * x_eval.shape[1])), "steps": c.tokens // c.batch_tokens,
                        "train_rows": len(data["train"]), "val_activations": int(x_val.shape[0]), "eval_activations": int(x_eval.shape[0]),
                        "eval_norms": _norms(x_eval),
                        "l0_matched_on": "validation documents (held out, disjoint from the evaluation documents)"}


def _norms(x: torch.Tensor) -> dict[str, float]:
    """Median, 99th percentile and largest norm, and the massive tokens' share (``sae_atoms.massive``):
    a few outlier tokens can make up most of explained variance's denominator."""
    n = x.norm(dim=1)
    return {"p50": float(n.median()), "p99": float(n.quantile(0.99)), "max": float(n.max())} | {
        f"massive_{k}": v for k, v in massive_share(x).items()}


# --------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    d = TokenFrontierConfig()
    p.add_argument("--model", default="smollm2-135m", help="a TransformerLens model (default: the embedded SmolLM2-135M)")
    p.add_argument("--hook", default=d.hook, help="the hook (e.g. blocks.12.hook_resid_post, blocks.12.mlp.hook_post)")
    p.add_argument("--corpus", default=d.corpus, help="text corpus (default human-en: its train / heldout splits)")
    p.add_argument("--tokens", type=int, default=d.tokens, help="training tokens")
    p.add_argument("--targets", type=float, nargs="+", default=list(d.targets), help="target L0s")
    p.add_argument("--units", nargs="+", default=list(d.units), choices=TOKEN_UNITS + MORE_TOKEN_UNITS)
    p.add_argument("--expansion", type=float, default=d.expansion, help="width as a multiple of the hook's width")
    p.add_argument("--context-size", type=int, default=d.context_size)
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help="tokens per training step")
    p.add_argument("--lr", type=float, default=d.lr, help="every unit's learning rate")
    p.add_argument("--atoms-training", choices=sorted(ATOMS_TRAINING), default=d.atoms_training,
                   help="how atoms and tsae hold their L0 while training: "
                        + "; or ".join(f"{k}, trained {v}" for k, v in ATOMS_TRAINING_TEXT.items()))
    p.add_argument("--atoms-alpha", type=float, default=d.atoms_alpha, help="partial whitening S^alpha of the atoms (1: the full AIP)")
    p.add_argument("--onb-refine", type=int, default=d.onb_refine, help=f"Procrustes steps of {ONB}'s ICA basis at each target")
    p.add_argument("--onb-contrast", choices=sorted(CONTRASTS), default=d.onb_contrast, help=f"FastICA contrast of {ONB}'s basis")
    p.add_argument("--val-tokens", type=int, default=d.val_tokens, help="held-out tokens the L0 is matched on")
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help="held-out tokens evaluated on")
    p.add_argument("--heldout-doc-tokens", type=int, default=d.heldout_doc_tokens,
                   help="tokens per held-out document at most (one window of each; raise it for more val / eval tokens)")
    p.add_argument("--ref-tokens", type=int, default=d.ref_tokens, help="training-stream tokens the reference AIP is fitted on")
    p.add_argument("--eval-batch-prompts", type=int, default=d.eval_batch_prompts, help="rows per run_evals pass (more on a GPU)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--drop-massive", action="store_true", help=f"leave tokens with a norm above {MASSIVE_RATIO:g}x the "
                                                               "median of their batch out of training (SAEBench's rule)")
    p.add_argument("--stability", action="store_true", help="also train each SAE's twins (another initialisation; "
                                                           "twice the width) for init and width consistency, each kind "
                                                           "in a runner pass of its own over the same batches")
    p.add_argument("--atoms-variant", type=named_fields, action="append", default=[], metavar="NAME=FIELD:VALUE,...",
                   help="also train atoms with these tsae_aip config fields, as unit atoms_NAME (a design compared "
                        "with atoms in the same pass; repeatable), e.g. alpha0.6=aip_alpha:0.6")
    p.add_argument("--unit-lr", type=unit_lr, action="append", default=[], metavar="UNIT=LR",
                   help="train this unit (or atoms variant) at its own learning rate, e.g. features_topk=3e-3 (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: the model, the activation store and the SAEs")
    p.add_argument("--resume", action="store_true", help="resume training from the last checkpoint under --out")
    p.add_argument("--out", required=True, help="output folder: results.json, token_frontier.png, saes/, checkpoints/")


def run_cli(args: argparse.Namespace) -> int:
    from sae_atoms.experiments.token_reading import format_table, plot_token_frontier, reading
    from sae_atoms.models import load_model

    targets = tuple(int(t) if float(t).is_integer() else t for t in args.targets)  # 32, not 32.0, in the table
    c = TokenFrontierConfig(hook=args.hook, units=tuple(args.units), targets=targets, expansion=args.expansion,
                            corpus=args.corpus, tokens=args.tokens, context_size=args.context_size,
                            batch_tokens=args.batch_tokens, lr=args.lr, atoms_training=args.atoms_training,
                            atoms_alpha=args.atoms_alpha, val_tokens=args.val_tokens,
                            eval_tokens=args.eval_tokens, heldout_doc_tokens=args.heldout_doc_tokens,
                            ref_tokens=args.ref_tokens, eval_batch_prompts=args.eval_batch_prompts, seed=args.seed, stability=args.stability,
                            drop_massive=args.drop_massive, onb_refine=args.onb_refine, onb_contrast=args.onb_contrast,
                            atoms_variants=tuple(args.atoms_variant), unit_lrs=tuple(args.unit_lr))
    check_config(c)
    out = Path(args.out)
    model = load_model(args.model, device=args.device)
    res = run_token_frontier(model, c, out=out, device=args.device, resume=args.resume)
    write_json({"token_frontier": res}, out / "results.json")
    plot_token_frontier(res["rows"], out / "token_frontier.png")
    print(format_table(res["rows"]))
    print("\n".join(reading(res["rows"])))
    return 0
