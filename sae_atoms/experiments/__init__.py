"""The paper's experiments, built on the library (``sae_atoms.aip``, ``evals``, ``steering``, ...).

One module per study, each with a ``run_*`` function and its ``sae-atoms`` subcommand
(``configure_parser`` / ``run_cli``):

    geometry    the representation shift: angle statistics by layer, Euclid vs AIP
    capacity    width x data-size sweeps, the R^2 cliff, the width rule
    steering    atoms vs features vs difference of means at matched side effect
    reproduce   the main job: all of the above on a real model, cached stages, a report
    report      the report (Markdown / HTML) and the README's results table

Nothing in the library imports from here.
"""
