"""The README's Python quickstart runs as written, and says what it prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_blocks(text: str) -> list[str]:
    """The ```python blocks of the "Quickstart (Python)" section (up to the next ``## `` heading)."""
    start = text.index("## Quickstart (Python)")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else None]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_quickstart_section_has_the_blocks_the_test_runs():
    blocks = quickstart_blocks(README.read_text())
    assert len(blocks) == 2 and "build_runner(" in blocks[1] and "train_on_activations(" in blocks[1]
    for block in blocks:
        compile(block, "README.md", "exec")


@pytest.mark.real_model
def test_readme_python_quickstart_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__readme__"}
    for block in quickstart_blocks(README.read_text()):
        exec(compile(block, str(README), "exec"), ns)
    model, sae, hook = ns["model"], ns["sae"], "blocks.12.hook_resid_post"
    # (a) the runner's SAE is saved with the hook and the processing the model really had
    from sae_lens import SAE

    saved = json.loads((tmp_path / "runner_atoms" / "cfg.json").read_text())["metadata"]
    assert saved["hook_name"] == hook
    assert saved["model_from_pretrained_kwargs"] == model.from_pretrained_kwargs
    assert SAE.load_from_disk(tmp_path / "runner_atoms").cfg.d_sae == 2304
    # (b) what the comments say: the hook recorded, held-out R² well above 0 at an L0 a bit under 16
    assert sae.cfg.metadata.hook_name == hook
    atoms, neurons = ns["atoms"], ns["neurons"]
    assert atoms["r2"] > 0.2 and 8 <= atoms["l0_mean"] <= 16 * 1.05, atoms
    assert neurons["r2"] > 0.999 and neurons["l0_mean"] == 576
    l0_train = float((sae.encode(ns["train"].x()) != 0).sum(-1).float().mean())
    assert abs(l0_train - 16) <= 0.5, l0_train
    assert torch.isfinite(ns["logits"]).all()
