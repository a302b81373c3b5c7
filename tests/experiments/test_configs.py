"""Study configs and the one vocabulary: settings come from config dataclasses, unit names from ``units.UNIT_KINDS``."""

import argparse

import pytest
import torch

from sae_atoms import argtypes, cli
from sae_atoms.experiments import capacity, fit_metric, frontier, geometry, reproduce
from sae_atoms.training import DEFAULT_STEPS, TrainOptions, train_on_activations, training_config
from sae_atoms.units import UNIT_KINDS


def test_unit_names_and_architectures_come_from_the_registry():
    assert reproduce.SAE_KINDS == {"features_standard": "standard", "features_jumprelu": "jumprelu", "atoms": "tsae_aip"}
    assert all(UNIT_KINDS[u].architecture == a for u, a in reproduce.SAE_KINDS.items())
    assert capacity.COMPARE_ARCHS == ("standard", "jumprelu", "tsae_aip") and capacity.DEFAULT_ARCH == "tsae_aip"
    assert set(frontier.UNITS) <= set(UNIT_KINDS)


def test_each_study_names_its_own_steps_and_the_library_keeps_one_default():
    assert not any(hasattr(m, "DEFAULT_STEPS") for m in (frontier, capacity, reproduce))
    assert DEFAULT_STEPS == 1500 and frontier.FrontierConfig().steps == 800 and capacity.CapacityConfig().steps == 400
    assert reproduce.Settings().train_steps == frontier.FrontierConfig.steps
    assert reproduce.Settings(quick=True).train_steps == reproduce.QUICK["train_steps"]


def test_quick_sizes_fill_what_the_user_left_unset():
    quick, full = reproduce.Settings(quick=True), reproduce.Settings()
    assert quick.capacity_expansions == reproduce.QUICK["capacity_expansions"] != full.capacity_expansions
    assert reproduce.Settings(quick=True, capacity_expansions=(1, 8)).capacity_expansions == (1, 8)
    assert set(reproduce.QUICK) == set(reproduce.FULL)  # each size in one place, both runs naming it
    for k in reproduce.QUICK:
        assert getattr(quick, k) == reproduce.QUICK[k] and getattr(full, k) == reproduce.FULL[k]
    assert reproduce.Settings(quick=True, n_cards=7).n_cards == 7


def test_stability_targets_are_frontier_targets_and_the_command_line_sets_them():
    import argparse

    import pytest

    with pytest.raises(ValueError, match="stability_targets=.5.0,. must be among the frontier targets"):
        reproduce.Settings(stability_targets=(5.0,))
    p = argparse.ArgumentParser()
    reproduce.configure_parser(p)
    given = lambda *a: p.parse_args(list(a)).stability_targets  # noqa: E731
    assert given() is None and given("--stability-targets") == [] and given("--stability-targets", "8", "16") == [8.0, 16.0]


def test_geometry_layers_quick_stop_at_the_hook_and_full_reach_the_last():
    full = reproduce._default_geometry_layers(30, 12, quick=False)
    quick = reproduce._default_geometry_layers(30, 12, quick=True)
    assert 12 in full and 29 in full and 0 in full and len(full) > len(quick)
    assert quick == [0, 6, 12]  # the forward passes stop after layer 12
    assert reproduce._default_geometry_layers(2, 0, quick=True) == [0]


def test_unknown_settings_are_refused_before_anything_runs():
    x = torch.randn(40, 8)
    with pytest.raises(TypeError, match="bogus"):
        train_on_activations(x, training_config("jumprelu", 8, 16), steps=1, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        capacity.capacity_sweep(x, x, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        frontier.run_frontier(x, x, "h", bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        geometry.layer_geometry(x, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        fit_metric.run_fit_metric(None, ["h"], "o", 10, bogus=1)


def test_train_options_given_as_an_object_or_by_name_agree():
    x = torch.randn(64, 8)
    cfg = training_config("jumprelu", 8, 16)
    a = train_on_activations(x, cfg, steps=3, seed=1, options=TrainOptions(batch_size=16, progress=False))
    b = train_on_activations(x, cfg, steps=3, seed=1, batch_size=16, progress=False)
    assert torch.equal(a.W_dec, b.W_dec)


def test_argparse_types_live_in_the_library_and_the_cli_re_exports_them():
    assert cli.int_at_least is argtypes.int_at_least and cli.positive_int is argtypes.positive_int
    with pytest.raises(argparse.ArgumentTypeError, match=">= 2"):
        argtypes.int_at_least(2)("1")
