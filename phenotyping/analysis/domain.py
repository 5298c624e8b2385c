"""Domain check: are a sample's cells like the cells the model was trained on?

A model's statistics, corrections and signatures are only as good as its predictions, and those fail quietly when the
cells come from another site (stain, optics, magnification). The model card's ``domain`` section is a compact
reference of the training distribution, written by ``train`` and by ``python -m phenotyping calibrate --model DIR
--domain-reference`` (:func:`phenotyping.training.postfit.calibrate_domain_dir`):

- **features.** The model's penultimate features of its training cells, projected by PCA to at most 32 dimensions;
  per-class means and one shared Ledoit-Wolf covariance in that space. A cell's score is the smallest Mahalanobis
  distance to a class mean (:meth:`FeatureReference.distances`).
- **calibration.** The distances of held-out in-distribution cells (the validation split): their 95th and 99th
  percentiles. A sample is out of distribution when its median cell distance exceeds ``threshold``: by default the
  held-out 95th percentile (a sample of in-distribution cells has a median that high only by chance well under 1 %
  of the time from about ten cells on); when cells of other sites were given, the geometric middle between that
  percentile and the lowest other-site median, if those lie above it.
- **image statistics.** Per channel the median and interquartile range of raw intensities, and the image height and
  width, with the range that 99 % of training cells span. A sample whose median statistic lies outside it (with a
  small margin) is out of distribution.
- **input.** Channel count and 2D/z-stack kind: a sample the model cannot take is out without running the model.

The per-sample verdict (:class:`DomainCheck`) is what ``predict`` puts in its JSON as ``domain_check`` and stores
with the run (``store.save_domain_check``); Analyse and Review show it, the report states it, signing asks for an
acknowledgement.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SECTION = "domain"
VERSION = "domain/1"
MAX_DIMS = 32
#: Margin around the training range of an image statistic: this share of the range, plus this share of its value.
RANGE_MARGIN = 0.1
VALUE_MARGIN = 0.05


def _b64(a: np.ndarray, dtype: str = "float32") -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")


def _unb64(s: str, shape: Sequence[int], dtype: str = "float32") -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).astype(np.float64).reshape(tuple(shape))


@dataclass(frozen=True)
class DomainCheck:
    """A sample's verdict. ``in_distribution`` is None when it could not be judged (a card without reference)."""

    in_distribution: bool | None
    score: float | None
    threshold: float | None
    reason: str
    n_cells: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"in_distribution": self.in_distribution,
                "score": None if self.score is None else round(float(self.score), 4),
                "threshold": None if self.threshold is None else round(float(self.threshold), 4),
                "reason": self.reason, "n_cells": self.n_cells, "details": self.details}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DomainCheck:
        return cls(in_distribution=d.get("in_distribution"), score=d.get("score"), threshold=d.get("threshold"),
                   reason=str(d.get("reason", "")), n_cells=int(d.get("n_cells", 0)),
                   details=dict(d.get("details") or {}))


# ---------------------------------------------------------------------------------------------- feature reference
@dataclass(frozen=True)
class FeatureReference:
    """PCA of training features and class-conditional Gaussians with one shared covariance in that space, stored
    whitened: ``transform`` maps a feature vector to PCA coordinates multiplied by the Cholesky factor of the shared
    precision, so the Mahalanobis distance to a class is the Euclidean distance to its whitened mean."""

    mean: np.ndarray  # (D,)
    transform: np.ndarray  # (k, D)
    class_means: np.ndarray  # (K, k), whitened

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Smallest Mahalanobis distance of each row of ``features`` (N, D) to a class mean: (N,)."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features of shape {f.shape} do not match the reference's {self.mean.shape[0]} "
                             "dimensions; was the reference computed for another model?")
        w = (f - self.mean) @ self.transform.T  # (N, k)
        d2 = ((w[:, None, :] - self.class_means[None, :, :]) ** 2).sum(axis=2)  # (N, K)
        return np.sqrt(d2.min(axis=1))

    def to_dict(self) -> dict[str, Any]:
        k, d = self.transform.shape
        return {"dims": int(k), "feature_dims": int(d), "n_classes": int(self.class_means.shape[0]),
                "mean": _b64(self.mean), "transform": _b64(self.transform, "float16"),
                "class_means": _b64(self.class_means),
                "encoding": "base64 little-endian float32 (transform float16), row-major"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureReference:
        k, dim, n = int(d["dims"]), int(d["feature_dims"]), int(d["n_classes"])
        return cls(mean=_unb64(d["mean"], (dim,)), transform=_unb64(d["transform"], (k, dim), "float16"),
                   class_means=_unb64(d["class_means"], (n, k)))


def fit_reference(features: np.ndarray, y: np.ndarray, n_classes: int, *, max_dims: int = MAX_DIMS
                  ) -> FeatureReference:
    """Fit the reference on training ``features`` (N, D) with class indices ``y`` (N,): PCA to at most
    ``max_dims`` dimensions, class means, Ledoit-Wolf shrinkage of the pooled within-class covariance.

    Raises:
        ValueError: fewer than two cells, or shapes that disagree.
    """
    from sklearn.covariance import ledoit_wolf

    f = np.asarray(features, np.float64)
    y = np.asarray(y, np.int64)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise ValueError(f"need at least two training cells with features (N, D) and labels (N,); got {f.shape} and "
                         f"{y.shape}")
    mean = f.mean(axis=0)
    k = max(1, min(max_dims, f.shape[1], len(f) - 1))
    _, _, vt = np.linalg.svd(f - mean, full_matrices=False)
    comps = vt[:k]  # (k, D)
    z = (f - mean) @ comps.T
    means = np.stack([z[y == c].mean(axis=0) if np.any(y == c) else z.mean(axis=0) for c in range(n_classes)])
    cov, _ = ledoit_wolf(z - means[y], assume_centered=True)
    cov = cov + 1e-6 * max(float(np.trace(cov)) / k, 1e-12) * np.eye(k)
    chol = np.linalg.cholesky(np.linalg.inv(cov))  # precision = chol @ chol.T
    return FeatureReference(mean=mean, transform=chol.T @ comps, class_means=means @ chol)


# ------------------------------------------------------------------------------------------------ image statistics
def image_stat_names(n_channels: int) -> list[str]:
    """Names of the columns of :func:`image_stats` for ``n_channels`` channels."""
    return ([f"median_ch{i}" for i in range(n_channels)] + [f"iqr_ch{i}" for i in range(n_channels)]
            + ["height", "width"])


def image_stats(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Per cell: per channel the median and interquartile range of its raw intensities, then height and width
    (the last two axes): ``(N, 2C + 2)`` float64. Arrays are channel-first (``(C, H, W)`` or ``(C, Z, H, W)``)."""
    rows: list[np.ndarray | None] = [None] * len(arrays)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        by_shape.setdefault(tuple(a.shape), []).append(i)
    for shape, idx in by_shape.items():  # one percentile call per shape; each row's figures are the same
        flat = np.stack([np.asarray(arrays[i], np.float64).reshape(shape[0], -1) for i in idx])  # (n, C, P)
        q25, med, q75 = _quartiles(flat)                                                           # (n, C) each
        size = np.broadcast_to(np.array([shape[-2], shape[-1]], np.float64), (len(idx), 2))
        for i, row in zip(idx, np.concatenate([med, q75 - q25, size], axis=1)):
            rows[i] = row
    return np.array(rows, np.float64).reshape(len(rows), -1)


def _quartiles(flat: np.ndarray) -> np.ndarray:
    """``np.percentile(flat, [25, 50, 75], axis=-1)`` (its default linear method, the same floating-point steps, so
    the same numbers) from one sort along the last axis, which is several times faster on (n, C, P) arrays than
    numpy's partition along a moved axis. Arrays holding NaN go to ``np.percentile`` itself."""
    if np.isnan(flat).any():
        return np.percentile(flat, [25, 50, 75], axis=-1)
    s = np.sort(flat, axis=-1)
    p = s.shape[-1]
    out = []
    for q in (0.25, 0.5, 0.75):
        v = (p - 1) * q                       # numpy's "virtual index" of the linear method
        lo = p - 1 if v >= p - 1 else int(np.floor(v))
        hi = p - 1 if v >= p - 1 else lo + 1
        g = v - lo
        a, b = s[..., lo], s[..., hi]
        d = b - a
        out.append(b - d * (1 - g) if g >= 0.5 else a + d * g)  # numpy's _lerp, from the nearer end
    return np.stack(out)


def _ranges(stats: np.ndarray) -> list[list[float]]:
    lo, hi = np.quantile(stats, [0.005, 0.995], axis=0)
    return [[round(float(a), 4), round(float(b), 4)] for a, b in zip(lo, hi)]


# ---------------------------------------------------------------------------------------------------- the section
def build_section(*, train_features: np.ndarray, train_y: np.ndarray, classes: Sequence[str],
                  heldout_features: np.ndarray, train_image_stats: np.ndarray, channels: int, dims: int = 2,
                  other_sites: Mapping[str, tuple[np.ndarray, np.ndarray | None]] | None = None,
                  source: str = "") -> dict[str, Any]:
    """The card's ``domain`` section from the training and held-out in-distribution cells.

    Args:
        train_features, train_y: penultimate features (N, D) and class indices of training cells.
        heldout_features: features of held-out in-distribution cells (the validation split).
        train_image_stats: :func:`image_stats` of training images.
        other_sites: ``{name: (features, image stats or None)}`` of cells from other sites, for the threshold.
    """
    ref = fit_reference(train_features, train_y, len(classes))
    held = ref.distances(heldout_features)
    if len(held) < 2:
        raise ValueError("need at least two held-out in-distribution cells to calibrate the domain threshold")
    q50, q95, q99 = (float(np.quantile(held, q)) for q in (0.5, 0.95, 0.99))
    threshold, rule = q95, "95th percentile of held-out in-distribution cell distances"
    sites = {name: float(np.median(ref.distances(f))) for name, (f, _) in (other_sites or {}).items() if len(f)}
    if sites and min(sites.values()) > q95:
        lowest = min(sites.values())
        threshold = float(np.sqrt(q95 * lowest))
        rule = (f"geometric middle of the held-out 95th percentile ({q95:.3g}) and the lowest other-site median "
                f"({lowest:.3g})")
    elif sites:
        rule += "; other sites given, but some have medians at or below it (left unchanged)"
    return {
        "version": VERSION, "source": source, "input": {"channels": int(channels), "dims": int(dims)},
        "features": ref.to_dict(),
        "calibration": {"heldout_cells": int(len(held)), "heldout_median": round(q50, 4),
                        "heldout_q95": round(q95, 4), "heldout_q99": round(q99, 4), "threshold": round(threshold, 4),
                        "rule": rule, "other_sites": {k: round(v, 4) for k, v in sites.items()},
                        "score": "median over the sample's cells of the smallest Mahalanobis distance to a class"},
        "image_stats": {"names": image_stat_names(int(channels)), "ranges": _ranges(train_image_stats),
                        "training_cells": int(len(train_image_stats))},
    }


@dataclass(frozen=True)
class DomainReference:
    """A card's ``domain`` section, parsed."""

    features: FeatureReference
    threshold: float
    cell_q99: float
    channels: int
    dims: int
    stat_names: list[str]
    stat_ranges: np.ndarray  # (S, 2)

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> DomainReference | None:
        """The reference in ``card``, or None when the card has no ``domain`` section.

        Raises:
            ValueError: a section of another version or with missing parts.
        """
        sec = card.get(SECTION)
        if not sec:
            return None
        if sec.get("version") != VERSION:
            raise ValueError(f"model card of {card.get('id', '?')!r}: domain section version {sec.get('version')!r}, "
                             f"this version reads {VERSION!r}; run `python -m phenotyping calibrate --model DIR "
                             "--domain-reference`")
        try:
            cal = sec["calibration"]
            return cls(features=FeatureReference.from_dict(sec["features"]), threshold=float(cal["threshold"]),
                       cell_q99=float(cal["heldout_q99"]), channels=int(sec["input"]["channels"]),
                       dims=int(sec["input"]["dims"]), stat_names=list(sec["image_stats"]["names"]),
                       stat_ranges=np.asarray(sec["image_stats"]["ranges"], np.float64).reshape(-1, 2))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"model card of {card.get('id', '?')!r}: unreadable domain section ({e!r}); run "
                             "`python -m phenotyping calibrate --model DIR --domain-reference`") from e

    def verdict(self, distances: np.ndarray, stats: np.ndarray | None = None) -> DomainCheck:
        """The sample's verdict from its cells' distances (N,) and :func:`image_stats` (N, S)."""
        d = np.asarray(distances, np.float64)
        if d.size == 0:
            return DomainCheck(None, None, self.threshold, "no cell passed image QC, so none could be checked")
        score = float(np.median(d))
        off = []
        if score > self.threshold:
            off.append(f"features far from the training cells: median distance {score:.3g} vs threshold "
                       f"{self.threshold:.3g}")
        off += self._stat_problems(stats)
        details = {"share_above_cell_q99": round(float(np.mean(d > self.cell_q99)), 4), "cell_q99": self.cell_q99}
        reason = "; ".join(off) if off else (f"features like the training cells: median distance {score:.3g} "
                                             f"within threshold {self.threshold:.3g}; image statistics in range")
        return DomainCheck(not off, score, self.threshold, reason, n_cells=int(d.size), details=details)

    def _stat_problems(self, stats: np.ndarray | None) -> list[str]:
        if stats is None or len(stats) == 0:
            return []
        s = np.asarray(stats, np.float64)
        if s.shape[1] != len(self.stat_names):
            return [f"image statistics of {s.shape[1]} columns, the reference has {len(self.stat_names)}"]
        med = np.median(s, axis=0)
        lo, hi = self.stat_ranges[:, 0], self.stat_ranges[:, 1]
        pad = RANGE_MARGIN * (hi - lo) + VALUE_MARGIN * np.maximum(np.abs(lo), np.abs(hi))
        bad = [i for i in range(len(med)) if not lo[i] - pad[i] <= med[i] <= hi[i] + pad[i]]
        size = [i for i in bad if self.stat_names[i] in ("height", "width")]
        inten = [i for i in bad if i not in size]
        out = []
        if inten:
            out.append("image intensity outside the training range: " + ", ".join(
                f"{self.stat_names[i]} {med[i]:.4g} vs {lo[i]:.4g}–{hi[i]:.4g}" for i in inten))
        if size:
            out.append("image size outside the training range: " + ", ".join(
                f"{self.stat_names[i]} {med[i]:.4g} px vs {lo[i]:.4g}–{hi[i]:.4g}" for i in size))
        return out


def input_check(card: Mapping[str, Any], shapes: Sequence[Sequence[int]]) -> DomainCheck | None:
    """Out of distribution (without running the model) when cells of these shapes (``(C, H, W)`` or
    ``(C, Z, H, W)``) do not have the model's channel count or 2D/z-stack kind; None when they do."""
    inp = card.get("input") or {}
    n = len(inp.get("channels") or ())
    dims = int(inp.get("dims", 2))
    kinds = sorted({(int(s[0]), len(s) - 1) for s in shapes if len(s) >= 3})
    if not n or not kinds:
        return None
    wrong_c = sorted({c for c, _ in kinds if c != n})
    if wrong_c:
        return DomainCheck(False, None, None, f"channels differ: model takes {n}, sample has "
                                              f"{', '.join(map(str, wrong_c))}", n_cells=len(shapes))
    wrong_d = sorted({d for _, d in kinds if d != dims})
    if wrong_d:
        kind = {2: "2D images", 3: "z-stacks"}
        return DomainCheck(False, None, None, f"image kind differs: model takes {kind.get(dims, dims)}, sample has "
                                              f"{', '.join(kind.get(d, str(d)) for d in wrong_d)}",
                           n_cells=len(shapes))
    return None


def not_checked(card: Mapping[str, Any]) -> DomainCheck:
    """The verdict of a model whose card has no domain reference."""
    return DomainCheck(None, None, None, f"model {card.get('id', '?')} has no domain reference in its card; run "
                                         "`python -m phenotyping calibrate --model DIR --domain-reference`")


def stored_check(store: Any, sample_id: str, model_id: str | None = None) -> DomainCheck | None:
    """The stored verdict of the sample's analysis model (or ``model_id``); None when none was stored."""
    model_id = model_id or store.analysis_model(sample_id)
    if model_id is None:
        return None
    found = store.domain_check(sample_id, model_id)
    return None if found is None else DomainCheck.from_dict(found["result"])


def banner(check: DomainCheck | None) -> str | None:
    """The warning screens show for an out-of-distribution verdict (None otherwise)."""
    if check is None or check.in_distribution is not False:
        return None
    return ("Out of distribution: these cells do not look like the cells the model was trained on, so its "
            f"predictions and everything computed from them may be wrong. {check.reason}.")


class RunScores:
    """Per-cell distances and image statistics collected batch by batch during a prediction run, merged at the end
    with those stored by earlier runs of the same model version (a resumed run judges all the sample's cells)."""

    def __init__(self, card: Mapping[str, Any], sample_id: str, model_version: str):
        self.card, self.sample_id, self.model_version = card, sample_id, model_version
        self.ref = DomainReference.from_card(card)
        self.rows: dict[str, list[float]] = {}

    def add(self, cell_ids: Sequence[int], features: np.ndarray | None, stats: np.ndarray | None) -> None:
        """One batch: the ids of the cells that passed QC, their features (B, D) and :func:`image_stats` (B, S)."""
        if self.ref is None or features is None or not len(cell_ids):
            return
        dist = self.ref.features.distances(features)
        s = np.zeros((len(cell_ids), 0)) if stats is None else np.asarray(stats, np.float64)
        for cid, dv, sv in zip(cell_ids, dist, s):
            self.rows[str(int(cid))] = [round(float(dv), 4), *(round(float(v), 4) for v in sv)]

    def verdict(self, previous: Mapping[str, Any] | None = None) -> tuple[DomainCheck, dict[str, list[float]]]:
        """The verdict over this run's cells and ``previous`` per-cell rows; returns it with the merged rows."""
        rows = {**dict(previous or {}), **self.rows}
        if self.ref is None:
            return not_checked(self.card), rows
        if not rows:
            return self.ref.verdict(np.zeros(0)), rows
        table = np.array(list(rows.values()), np.float64)
        stats = table[:, 1:] if table.shape[1] > 1 else None
        return self.ref.verdict(table[:, 0], stats), rows

    def finish(self, store: Any, actor: str) -> dict[str, Any]:
        """The verdict over this run's cells and those an earlier run of the same model version scored, as a dict;
        stored (``store.save_domain_check``) when this run scored any cell or nothing is stored yet."""
        model_id = str(self.card["id"])
        before = store.domain_check(self.sample_id, model_id)
        same = before is not None and before["model_version"] == self.model_version
        if same and not self.rows:
            return before["result"]
        check, rows = self.verdict(before["cell_scores"] if same else None)
        store.save_domain_check(self.sample_id, model_id, self.model_version, check.to_dict(), rows, actor=actor)
        return check.to_dict()
