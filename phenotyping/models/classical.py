"""Classical baselines from scikit-learn: k-nearest neighbours and an RBF-kernel SVM, on pixels or on embeddings.

Same outward interface as the neural models as far as it makes sense: ``config``, ``fit(x, y, targets)`` and
``__call__(x) -> ModelOutput`` (logits are log-probabilities). Input ``(N, C, H, W)`` (or ``(N, C, Z, H, W)``) is
treated as pixels: area-downsampled to ``pixel_size`` × ``pixel_size`` per channel and flattened; ``(N, D)`` is
treated as embeddings (e.g. a neural model's ``features``). Features are standardised before fitting.
Saving keeps the training features, not a pickle: ``get_state``/``set_state`` refit deterministically.
:class:`EmbeddedClassicalModel` wraps one of these with the neural model whose features it was fitted on, so it
takes images like the neural models do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from phenotyping.models._base import ModelOutput, base_config
from phenotyping.models._registry import register_model


class ClassicalCellModel:
    """kNN (``kind="knn"``) or RBF-SVM (``kind="svm"``) classifier plus a matching regressor per target.

    Args:
        in_chans, num_classes (K), num_targets (M), img_size: as for the neural models.
        pixel_size: side length images are downsampled to before flattening (pixels input).
        n_neighbors: k for kNN (distance-weighted). C, gamma: RBF-SVM parameters (``gamma="scale"`` = 1/(D·var)).
        class_weight: ``"balanced"`` or ``None`` (SVM only; kNN has no class weights). SVM probabilities
            are Platt-scaled on unshuffled stratified folds (deterministic).
    """

    is_neural = False

    def __init__(self, *, arch: str, kind: str, in_chans: int = 2, num_classes: int = 2, num_targets: int = 0,
                 img_size: int = 40, pixel_size: int = 16, n_neighbors: int = 7, C: float = 10.0,
                 gamma: str | float = "scale", class_weight: str | None = "balanced"):
        if kind not in ("knn", "svm"):
            raise ValueError(f"kind must be 'knn' or 'svm', got {kind!r}")
        self.config = base_config(arch, kind=kind, in_chans=in_chans, num_classes=num_classes, num_targets=num_targets,
                                  img_size=img_size, pixel_size=pixel_size, n_neighbors=n_neighbors, C=C, gamma=gamma,
                                  class_weight=class_weight)
        self._state: dict[str, np.ndarray] | None = None

    def _vectors(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if t.ndim == 2:
            return t.numpy()                                            # embeddings (N, D)
        if t.ndim not in (4, 5) or t.shape[1] != self.config["in_chans"]:
            raise ValueError(f"{self.config['arch']} expects (N, {self.config['in_chans']}, H, W), (N, C, Z, H, W) "
                             f"or embeddings (N, D); got shape {tuple(t.shape)}")
        if t.ndim == 5:
            t = t.mean(2)                                               # project the z-stack
        p = self.config["pixel_size"]
        return F.adaptive_avg_pool2d(t, (p, p)).flatten(1).numpy()      # (N, C·p·p)

    def fit(self, x: np.ndarray | torch.Tensor, y: np.ndarray, targets: np.ndarray | None = None) -> ClassicalCellModel:
        """Fit on images or embeddings ``x``, class indices ``y`` (N,), standardised targets (N, M) or None."""
        m = self.config["num_targets"]
        t = np.zeros((len(y), 0), np.float32) if targets is None else np.asarray(targets, np.float32).reshape(len(y), -1)
        if t.shape[1] != m:
            raise ValueError(f"expected {m} target column(s), got {t.shape[1]}")
        self.set_state({"x": self._vectors(x), "y": np.asarray(y, np.int64), "targets": t})
        return self

    def get_state(self) -> dict[str, np.ndarray]:
        """The training features and labels (what ``set_state`` refits from)."""
        if self._state is None:
            raise RuntimeError(f"{self.config['arch']} has not been fitted")
        return self._state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Refit from stored training features ``x`` (N, D), labels ``y`` (N,) and ``targets`` (N, M)."""
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC, SVR

        c = self.config
        x, y, t = state["x"], state["y"], state["targets"]
        if c["kind"] == "knn":
            k = min(c["n_neighbors"], len(y))
            self._clf = make_pipeline(StandardScaler(), KNeighborsClassifier(k, weights="distance")).fit(x, y)
            self._regs = [make_pipeline(StandardScaler(), KNeighborsRegressor(k, weights="distance")).fit(x, t[:, j])
                          for j in range(t.shape[1])]
        else:
            # Platt-scaled probabilities from deterministic (unshuffled) stratified folds, then one SVC on all cells
            counts = np.bincount(y)
            single = np.flatnonzero(counts == 1)
            if single.size:
                raise ValueError(f"the SVM's Platt-scaled probabilities need at least 2 training cells per class; "
                                 f"class index(es) {single.tolist()} have 1. Add cells or leave the class out")
            folds = int(max(2, min(5, counts[counts > 0].min())))
            svc = SVC(C=c["C"], gamma=c["gamma"], class_weight=c["class_weight"])
            self._clf = make_pipeline(StandardScaler(), CalibratedClassifierCV(svc, cv=folds, ensemble=False)).fit(x, y)
            self._regs = [make_pipeline(StandardScaler(), SVR(C=c["C"], gamma=c["gamma"])).fit(x, t[:, j])
                          for j in range(t.shape[1])]
        self._state = {"x": x, "y": y, "targets": t}

    def eval(self) -> ClassicalCellModel:
        return self

    def __call__(self, x: np.ndarray | torch.Tensor) -> ModelOutput:
        """Predict: logits = log class probabilities (N, K) (classes unseen in training get probability 0)."""
        v = self._vectors(x)
        self.get_state()
        proba = np.zeros((len(v), self.config["num_classes"]), np.float64)
        proba[:, self._clf.classes_] = self._clf.predict_proba(v)
        reg = np.stack([r.predict(v) for r in self._regs], 1) if self._regs else np.zeros((len(v), 0))
        return ModelOutput(torch.from_numpy(np.log(proba + 1e-12)).float(), torch.from_numpy(reg).float(),
                           torch.from_numpy(v), {})


class EmbeddedClassicalModel:
    """A kNN/SVM on the penultimate features of a trained neural model: images → ``embedder(x).features`` (N, D) →
    ``head`` (a fitted or unfitted :class:`ClassicalCellModel`).

    Its input is what the embedder takes: images normalised by the embedder's preprocessing. ``source`` records which
    model folder made the features (``dir``, ``relative_dir``, ``id``, ``architecture``, ``checkpoint_sha256``); the
    checkpoint stores it, and :func:`phenotyping.models.checkpoint.load_model_dir` finds and verifies that folder.
    """

    is_neural = False
    takes_images = True     # normalised image batches on a device, like the neural models (sample prediction)

    def __init__(self, head: ClassicalCellModel, embedder: Any, source: dict[str, Any], *, batch_size: int = 256):
        if getattr(embedder, "is_neural", True) is False:
            raise TypeError("the embedding model must be a neural model (its penultimate features are the input)")
        self.head, self.embedder, self.source = head, embedder.eval(), dict(source)
        self.config = head.config
        self.batch_size = batch_size

    def features(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """The embedder's penultimate features ``(N, D)`` float32 of normalised images ``x`` (N, C, …)."""
        t = torch.as_tensor(x)
        param = next(self.embedder.parameters(), None)
        if param is not None:
            t = t.to(param.device)
        out = []
        with torch.inference_mode():
            for i in range(0, len(t), self.batch_size):
                out.append(self.embedder(t[i:i + self.batch_size].float()).features.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def fit(self, x: np.ndarray | torch.Tensor, y: np.ndarray, targets: np.ndarray | None = None
            ) -> EmbeddedClassicalModel:
        """Fit the head on the embeddings of normalised images ``x``; ``y``/``targets`` as for ClassicalCellModel."""
        self.head.fit(self.features(x), y, targets)
        return self

    def get_state(self) -> dict[str, np.ndarray]:
        """The head's training embeddings and labels (see ClassicalCellModel.get_state)."""
        return self.head.get_state()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.head.set_state(state)

    def eval(self) -> EmbeddedClassicalModel:
        return self

    def to(self, device: Any) -> EmbeddedClassicalModel:
        """Move the embedder (the classifier runs on CPU); returns self."""
        self.embedder.to(device)
        return self

    def __call__(self, x: np.ndarray | torch.Tensor) -> ModelOutput:
        """Predict from normalised images: the head's outputs, with ``features`` = the embeddings (N, D)."""
        if torch.as_tensor(x).ndim == 2:
            raise ValueError(f"{self.config['arch']} on embeddings takes images (N, C, H, W) or (N, C, Z, H, W) and "
                             "computes the embeddings itself; got a 2-D array")
        f = self.features(x)
        out = self.head(f)
        return ModelOutput(out.logits, out.regression, torch.from_numpy(f), {})


def _build(arch: str, kind: str, defaults: dict[str, Any], cfg: dict[str, Any]) -> ClassicalCellModel:
    given = cfg.pop("kind", kind)
    if given != kind:
        raise ValueError(f"{arch} is a {kind} model; got kind={given!r}")
    return ClassicalCellModel(arch=arch, kind=kind, **{**defaults, **cfg})


@register_model
def knn(**cfg: Any) -> ClassicalCellModel:
    """k-nearest neighbours (k = 7, distance-weighted) on standardised 16 × 16 pixels per channel."""
    return _build("knn", "knn", {}, cfg)


@register_model
def svm(**cfg: Any) -> ClassicalCellModel:
    """RBF-SVM (C = 10, gamma = 'scale', balanced class weights) on standardised 16 × 16 pixels per channel."""
    return _build("svm", "svm", {}, cfg)


@register_model
def test_knn(**cfg: Any) -> ClassicalCellModel:
    """kNN on 4 × 4 pixels for unit tests."""
    return _build("test_knn", "knn", {"pixel_size": 4, "n_neighbors": 3}, cfg)


@register_model
def test_svm(**cfg: Any) -> ClassicalCellModel:
    """SVM on 4 × 4 pixels for unit tests."""
    return _build("test_svm", "svm", {"pixel_size": 4}, cfg)
