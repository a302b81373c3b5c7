"""Store TransformerLens's MLP and unembedding weights so that its per-pass transposed copy is free.

TransformerLens's ``GatedMLP`` and ``Unembed`` call ``F.linear(x, W.T.contiguous())`` on every
forward pass, so that the matrix has Hugging Face's ``nn.Linear`` layout (in bfloat16 the
accumulation order depends on it). With ``W`` stored row-major, ``.contiguous()`` copies the whole
weight each time: for SmolLM2-135M three 576 x 1536 matrices per layer and the 576 x 49152
unembedding, about 430 MB per forward pass, which on a CPU costs more than the arithmetic of a
small batch (a forward pass over a few tokens, as in generation, steering resumes and extraction).

``keep_transposes(model)`` stores each such weight as the transpose of a contiguous matrix
(``W.data = W.T.contiguous().T``): the same values, ``W.T`` is already contiguous, so
``.contiguous()`` returns it without a copy and ``F.linear`` gets the very matrix it got before
(outputs bit-identical), with no extra memory.
"""

from __future__ import annotations

from typing import Any

import torch

WEIGHTS = {"GatedMLP": ("W_gate", "W_in", "W_out"), "Unembed": ("W_U",)}  # the modules that copy W.T


def keep_transposes(model: Any) -> int:
    """Re-lay ``model``'s MLP and unembedding weights in place (module docstring); returns how many."""
    n = 0
    with torch.no_grad():
        for mod in model.modules():
            for name in WEIGHTS.get(type(mod).__name__, ()):
                w = getattr(mod, name, None)
                if isinstance(w, torch.nn.Parameter) and w.dim() == 2 and not w.T.is_contiguous():
                    w.data = w.data.T.contiguous().T
                    n += 1
    return n
