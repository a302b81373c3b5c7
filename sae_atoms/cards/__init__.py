"""Atom cards: a static, offline HTML site describing the units of any SAELens SAE.

``write_cards(site_for(model, sae, source), out)`` writes ``out/index.html`` (every unit with its
firing rate, mean and max code, label purity and coherence; sortable) and one card per chosen unit
(``unit_<j>.html``: top-activating contexts shaded token by token, the histogram of its codes, the
tokens its decoder row promotes and suppresses, label purity, nearest units by ``|cos|`` in the AIP
and raw, the units it fires with against the uniqueness bound ``mu < 1/(2K - 1)``, and a one-line
steering preview). ``show(sae, j, model=..., source=...)`` renders one card inline in a notebook.
The command is ``sae-atoms cards SAE_DIR (--activations DIR | --corpus SPEC) --out DIR``.

Rooms: ``compute`` (the numbers), ``render`` (HTML), ``build`` (cards, the site, ``show``),
``command`` (the subcommand).
"""

from sae_atoms.cards.build import CardView, Site, card, is_cards_dir, show, site_for, write_cards
from sae_atoms.cards.compute import (CardConfig, Observations, observe_activations, observe_corpus, observe_rows)

__all__ = ["CardConfig", "CardView", "Observations", "Site", "card", "is_cards_dir", "observe_activations",
           "observe_corpus", "observe_rows", "show", "site_for", "write_cards"]
