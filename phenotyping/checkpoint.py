"""A model directory: ``checkpoint.pt`` (weights + everything needed to rebuild) and ``model_card.json``.

The checkpoint holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``; the
classical models store their training features instead of a pickle and are refitted on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping.data import Preprocess, TargetScaler
from phenotyping.errors import NotFoundError

CHECKPOINT = "checkpoint.pt"
CARD = "model_card.json"


@dataclass
class LoadedModel:
    """A rebuilt model (in eval mode) with its card and preprocessing."""

    model: Any
    card: dict[str, Any]
    preprocess: Preprocess
    targets: TargetScaler | None
    classes: list[str]
    temperature: float
    path: Path

    @property
    def id(self) -> str:
        return str(self.card["id"])


def _describe(path: Path) -> str:
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        return f"{path} holds: {', '.join(names) if names else '(nothing)'}"
    parent = path.parent
    if parent.is_dir():
        dirs = sorted(p.name for p in parent.iterdir() if (p / CARD).is_file())
        return f"{path} does not exist; model folders in {parent}: {', '.join(dirs) if dirs else '(none)'}"
    return f"{path} does not exist (nor does its parent {parent})"


def save_model_dir(out: str | Path, model: Any, card: dict[str, Any], *, preprocess: Preprocess,
                   targets: TargetScaler | None) -> Path:
    """Write ``out/checkpoint.pt`` and ``out/model_card.json`` (``out`` is created; existing files are replaced)."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt: dict[str, Any] = {"arch": model.config["arch"], "config": dict(model.config),
                            "preprocess": preprocess.to_dict(), "targets": targets.to_dict() if targets else None,
                            "classes": list(card["classes"]), "calibration": dict(card.get("calibration", {}))}
    if getattr(model, "is_neural", True):
        ckpt["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    else:
        ckpt["classical_state"] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.get_state().items()}
    torch.save(ckpt, out / CHECKPOINT)
    (out / CARD).write_text(json.dumps(card, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return out


def load_card(path: str | Path) -> dict[str, Any]:
    """Read ``model_card.json`` from a model folder; FileNotFoundError says what the folder holds instead."""
    path = Path(path)
    if not (path / CARD).is_file():
        raise FileNotFoundError(f"no {CARD} in model folder: {_describe(path)}")
    return json.loads((path / CARD).read_text(encoding="utf-8"))


def load_model_dir(path: str | Path) -> LoadedModel:
    """Rebuild the exact model saved in ``path`` (eval mode, CPU).

    Raises:
        FileNotFoundError: the folder, its checkpoint or its card is missing (the message lists what exists).
        NotFoundError: the checkpoint names an architecture this version does not register.
    """
    import torch

    from phenotyping.models import create_model

    path = Path(path)
    card = load_card(path)
    if not (path / CHECKPOINT).is_file():
        raise FileNotFoundError(f"no {CHECKPOINT} in model folder: {_describe(path)}")
    ckpt = torch.load(path / CHECKPOINT, map_location="cpu", weights_only=True)
    try:
        model = create_model(ckpt["arch"], **ckpt["config"])
    except NotFoundError as e:
        raise NotFoundError(f"{path / CHECKPOINT}: {e}") from e
    if "state_dict" in ckpt:
        state = ckpt["state_dict"]
        remap = getattr(model, "remap_state_dict", None)   # key renames for checkpoints of older layouts
        model.load_state_dict(remap(state) if remap is not None else state)
    else:
        model.set_state({k: v.numpy() for k, v in ckpt["classical_state"].items()})
    model.eval()
    tg = ckpt.get("targets")
    return LoadedModel(model=model, card=card, preprocess=Preprocess.from_dict(ckpt["preprocess"]),
                       targets=TargetScaler(**tg) if tg else None, classes=list(ckpt["classes"]),
                       temperature=float(ckpt.get("calibration", {}).get("temperature", 1.0)), path=path)
