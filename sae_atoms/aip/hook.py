"""A removable AIP view of a TransformerLens hook point: ``f"{hook_name}.hook_aip"`` carries
``metric.whiten(x)`` while the model's output stays unchanged."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import Tensor

from sae_atoms.aip.metric import AIPMetric


class AIPHook:
    """A removable AIP view of one hook point: ``f"{hook_name}.hook_aip"`` carries ``metric.whiten(x)``.

    The new ``HookPoint`` is a child module of the hook point (so ``model.setup()`` keeps it in
    ``hook_dict`` and ``run_with_cache`` can cache it); a permanent forward hook on the hook point
    feeds it the whitened activation and returns nothing, so the model's output is unchanged.
    The whitening runs only when something hooks ``hook_aip`` (e.g. a cache), so an idle
    attachment costs nothing. It sees the activation as it arrives at the hook point (before
    hooks added later, e.g. steering edits, which run after it).
    """

    def __init__(self, model, hook_name: str, metric: AIPMetric, name: str = "hook_aip"):
        from transformer_lens.hook_points import HookPoint

        from sae_atoms.models import check_hook_name

        check_hook_name(model, hook_name)
        hp = model.mod_dict[hook_name]
        if not isinstance(hp, HookPoint):
            raise TypeError(
                f"{hook_name!r} is a {type(hp).__name__} (an SAE attached there?), not a HookPoint. Attach the AIP "
                f"before adding the SAE, or to the SAE's input hook f'{hook_name}.hook_sae_input'.")
        if name in dict(hp.named_children()):
            raise ValueError(f"{hook_name!r} already has an AIP hook {name!r}; remove it first (handle.remove()).")
        self.model, self.hook_name, self.metric = model, hook_name, metric
        self.name = f"{hook_name}.{name}"
        self._child_name = name
        self.point = HookPoint()
        self._parent = hp
        hp.add_module(name, self.point)
        model.setup()
        point = self.point

        def aip_feed(x: Tensor, hook) -> None:
            if point._forward_hooks:  # only when someone listens
                if x.shape[-1] != metric.d:
                    raise ValueError(f"the AIP metric is for d={metric.d} but {hook_name} has d={x.shape[-1]}; "
                                     "fit the metric on this hook's activations.")
                point(metric.whiten(x))
            return None

        before = list(hp.fwd_hooks)
        hp.add_hook(aip_feed, dir="fwd", is_permanent=True)
        # our own record of the handle added (``LensHandle.user_hook`` exists only from TransformerLens 3.3)
        self._handles = [h for h in hp.fwd_hooks if not any(h is b for b in before)]
        self.removed = False

    def remove(self) -> None:
        """Detach: drop the permanent hook and the ``hook_aip`` point (idempotent)."""
        if self.removed:
            return
        hp = self._parent
        for h in self._handles:
            h.hook.remove()
        hp.fwd_hooks = [h for h in hp.fwd_hooks if not any(h is o for o in self._handles)]
        if self._child_name in hp._modules:
            del hp._modules[self._child_name]
        self.model.setup()
        self.removed = True

    def __enter__(self) -> "AIPHook":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach(model, hook_name: str, metric: AIPMetric, name: str = "hook_aip") -> AIPHook:
    """Add ``f"{hook_name}.{name}"`` to ``model`` carrying AIP-whitened activations.

    ``model.run_with_cache(tokens, names_filter=[f"{hook_name}.hook_aip"])`` then caches
    ``metric.whiten(activation)``; logits are unchanged. Works on ``HookedTransformer`` and
    ``HookedSAETransformer`` (at a hook with no SAE on it; with an SAE there, attach to
    ``f"{hook_name}.hook_sae_input"``). Returns an ``AIPHook``: ``.remove()``, or use it in ``with``.
    """
    return AIPHook(model, hook_name, metric, name)


@contextmanager
def aip_hook(model, hook_name: str, metric: AIPMetric, name: str = "hook_aip") -> Iterator[AIPHook]:
    """``with aip_hook(model, hook, metric): model.run_with_cache(...)`` (removed on exit)."""
    h = attach(model, hook_name, metric, name)
    try:
        yield h
    finally:
        h.remove()
