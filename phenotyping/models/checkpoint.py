"""A model directory: ``checkpoint.pt`` (weights + everything needed to rebuild) and ``model_card.json``.

The checkpoint holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``; the
classical models store their training features instead of a pickle and are refitted on load.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phenotyping.errors import NotFoundError
from phenotyping.models.preprocess import Preprocess, TargetScaler

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
        source = getattr(model, "source", None)
        if source is not None:      # a kNN/SVM on a neural model's embeddings: which model, to find it again
            ckpt["embedding_model"] = dict(source)
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
        if ckpt.get("embedding_model"):
            from phenotyping.models.classical import EmbeddedClassicalModel

            emb = _load_embedding_model(path, ckpt["embedding_model"], ckpt["preprocess"])
            model = EmbeddedClassicalModel(model, emb.model, ckpt["embedding_model"])
        model.set_state({k: v.numpy() for k, v in ckpt["classical_state"].items()})
    model.eval()
    tg = ckpt.get("targets")
    return LoadedModel(model=model, card=card, preprocess=Preprocess.from_dict(ckpt["preprocess"]),
                       targets=TargetScaler(**tg) if tg else None, classes=list(ckpt["classes"]),
                       temperature=float(ckpt.get("calibration", {}).get("temperature", 1.0)), path=path)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def embedding_source(model_dir: str | Path, out: str | Path, lm: LoadedModel) -> dict[str, Any]:
    """What a kNN/SVM written to ``out`` stores about the neural model in ``model_dir`` whose features it uses."""
    import os

    model_dir, out = Path(model_dir).resolve(), Path(out).resolve()
    return {"dir": str(model_dir), "relative_dir": os.path.relpath(model_dir, out), "id": lm.id,
            "architecture": lm.card["architecture"]["name"], "checkpoint_sha256": file_sha256(model_dir / CHECKPOINT)}


def _card_id(folder: Path) -> str:
    try:
        return str(load_card(folder).get("id"))
    except (OSError, ValueError):
        return "unreadable card"


def _load_embedding_model(path: Path, source: dict[str, Any], preprocess: dict[str, Any]) -> LoadedModel:
    """Find and load the neural model a kNN/SVM in ``path`` was fitted on; it must be the same checkpoint.

    Looks at ``relative_dir`` (from ``path``), then ``dir``, then a folder of the same name beside ``path``.

    Raises:
        NotFoundError: no such folder holds that exact model; the message lists what was found and what exists.
    """
    candidates = [(path / source["relative_dir"]).resolve(), Path(source["dir"]),
                  path.resolve().parent / Path(source["dir"]).name]
    seen: list[str] = []
    for c in dict.fromkeys(candidates):
        if not (c / CARD).is_file() or not (c / CHECKPOINT).is_file():
            continue
        card = {"id": _card_id(c)}
        digest = file_sha256(c / CHECKPOINT)
        if card.get("id") == source["id"] and digest == source["checkpoint_sha256"]:
            lm = load_model_dir(c)
            if lm.preprocess != Preprocess.from_dict(preprocess):
                raise NotFoundError(f"{path}: the embedding model in {c} preprocesses images differently from when "
                                    "this classifier was fitted; retrain the classifier")
            return lm
        seen.append(f"{c} holds {card.get('id')!r}" + ("" if card.get("id") != source["id"]
                                                       else " with different weights (retrained?)"))
    parent = path.resolve().parent
    existing = sorted(f"{p.name} ({_card_id(p)})" for p in parent.iterdir() if (p / CARD).is_file()
                      and (p / CHECKPOINT).is_file() and p.resolve() != path.resolve())
    raise NotFoundError(
        f"{path} is a {source.get('architecture', 'neural')}-embedding classifier: it needs model "
        f"{source['id']!r} (checkpoint sha256 {source['checkpoint_sha256'][:12]}…), last at {source['dir']}. "
        f"Not found at {', '.join(str(c) for c in dict.fromkeys(candidates))}"
        + (f"; {'; '.join(seen)}" if seen else "")
        + f". Model folders in {parent}: {', '.join(existing) if existing else '(none)'}. Put that model folder "
        "back, or retrain the classifier with --embed-model pointing at an existing model")


_model_cache: dict[tuple[str, float], Any] = {}
_model_lock = threading.Lock()


def load_model_cached(model_dir: str | Path) -> Any:
    """:func:`load_model_dir`, kept in memory per folder and checkpoint time (one copy per server process)."""
    path = Path(model_dir).resolve()
    ckpt = path / CHECKPOINT
    key = (str(path), ckpt.stat().st_mtime if ckpt.exists() else 0.0)
    with _model_lock:
        if key not in _model_cache:
            _model_cache[key] = load_model_dir(path)
        return _model_cache[key]
