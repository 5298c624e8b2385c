"""Training data: manifest rows → fixed-size float arrays, channel-aware augmentation, grouped splits.

The preprocessing saved with a model (channel specs, sizing, normalisation, target scaling) is
:mod:`phenotyping.models.preprocess`.

Axes: 2D cells are ``(C, H, W)``, z-stacks ``(C, Z, H, W)``; batches add a leading ``N``/``B``.
Class imbalance is corrected exactly once, by class weights in the loss (:func:`class_weights`); the loader never
over-samples, so the model's predicted proportions on a held-out set can be compared with the true ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from phenotyping.errors import ImageError
from phenotyping.models.preprocess import ChannelSpec, Preprocess, border_median, size_cell

IMAGE_FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ----------------------------------------------------------------------------------------------------- manifests
def load_rows(manifest: str | Path, *, label_column: str | None = None) -> list[dict[str, Any]]:
    """Rows of a manifest (``path`` resolved to a ``Path``, other columns as strings).

    ``manifest`` may be a ``manifest.csv``, a folder holding one, or a folder in ImageFolder layout (one subfolder per
    class); in the last case each row gets ``cell_id`` = ``"<class folder>/<file name>"`` (unique even when two
    class folders hold files of the same name) and the subfolder name under ``label_column`` (``"label"`` if not
    given). A manifest's own ``cell_id`` column is kept as it is.

    Raises:
        FileNotFoundError: nothing at ``manifest``, or a folder with neither a manifest.csv nor class subfolders.
    """
    from phenotyping.ingest import read_manifest

    p = Path(manifest)
    if p.is_file():
        return read_manifest(p)
    if not p.is_dir():
        raise FileNotFoundError(f"manifest {p} does not exist; pass a manifest.csv or an ImageFolder-layout folder")
    if (p / "manifest.csv").is_file():
        return read_manifest(p / "manifest.csv")
    key = label_column or "label"
    rows = [{"cell_id": f"{d.name}/{f.name}", "path": f.resolve(), key: d.name}
            for d in sorted(x for x in p.iterdir() if x.is_dir() and not x.name.startswith("."))
            for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_FOLDER_SUFFIXES]
    if not rows:
        raise FileNotFoundError(f"{p} has no manifest.csv and no class subfolders with images "
                                f"({', '.join(IMAGE_FOLDER_SUFFIXES)})")
    return rows


def column(rows: Sequence[dict[str, Any]], name: str, *, where: str = "manifest") -> list[str]:
    """The values of column ``name``; raises KeyError naming the columns that exist."""
    if rows and name not in rows[0]:
        raise KeyError(f"column {name!r} is not in the {where}; columns: {', '.join(rows[0])}")
    return [str(r[name]) for r in rows]


# ----------------------------------------------------------------------------------------------------- channels


def describe_augmentation(specs: Sequence[ChannelSpec], appearance: bool = False, hue: float = 0.0) -> str:
    """One line saying which flips/rotations :func:`augment` draws for these channels and what each does, and
    whether :func:`augment_appearance` (with its hue shift) follows."""
    parts = []
    for attr, label in (("hflip", "horizontal flip"), ("vflip", "vertical flip")):
        never = [s.name for s in specs if getattr(s, attr) == "never"]
        if never:
            parts.append(f"no {label} (it would change the meaning of {', '.join(never)})")
            continue
        order = [s.name for s in specs]
        how = [f"{s.name} negated" if getattr(s, attr) == "negate" else f"{s.name} ↔ {getattr(s, attr)[5:]}"
               for s in specs if getattr(s, attr) == "negate"
               or (getattr(s, attr).startswith("swap:") and order.index(s.name) < order.index(getattr(s, attr)[5:]))]
        parts.append(label + (f" ({'; '.join(how)})" if how else ""))
    fixed = [s.name for s in specs if not s.rot90]
    parts.append(f"no 90° rotations (direction-dependent: {', '.join(fixed)})" if fixed else "90° rotations")
    if appearance:
        parts[-1] += "; scale, stain, blur and background"
        if hue:
            parts.append(f"stain hue over the whole circle ({hue:.0%} of draws)")
    return ", ".join(parts)


def check_hue_augmentation(hue: float, appearance: bool, n_channels: int, dims: int) -> None:
    """Raise ValueError unless the hue shift (a probability in [0, 1]) is asked of 2D RGB cells under appearance
    augmentation."""
    if not 0 <= hue <= 1:
        raise ValueError(f"augment_hue is the share of training draws that get a hue shift, in [0, 1]; got {hue}")
    if hue and (n_channels != 3 or dims != 2 or not appearance):
        raise ValueError(f"augment_hue shifts the hue of 2D RGB cells under augment_appearance; these images have "
                         f"{n_channels} channel(s), {dims}D"
                         + ("" if appearance else ", and augment_appearance is off"))


def augment(x: np.ndarray, specs: Sequence[ChannelSpec], rng: np.random.Generator) -> np.ndarray:
    """One random flip/rotation applied to ALL channels of one cell together, honouring each channel's spec.

    Args:
        x: ``(C, H, W)`` or ``(C, Z, H, W)`` raw (not yet normalised) intensities.
        specs: one :class:`ChannelSpec` per channel.
        rng: the random generator (seeded by the caller for reproducibility).
    Returns:
        a new array of the same shape. A flip is skipped when any channel's rule for it is ``"never"``; rotations by
        90° are drawn only when every channel allows them (and H == W).
    """
    if len(specs) != x.shape[0]:
        raise ValueError(f"{len(specs)} channel specs for an image with {x.shape[0]} channels")
    index = {s.name: i for i, s in enumerate(specs)}
    out = x
    for axis, attr in ((-1, "hflip"), (-2, "vflip")):
        rules = [getattr(s, attr) for s in specs]
        if rng.random() < 0.5 and "never" not in rules:
            out = np.flip(out, axis)
            if any(r != "same" for r in rules):
                src = [index[r[5:]] if r.startswith("swap:") else i for i, r in enumerate(rules)]
                out = out[src]
                sign = np.array([-1.0 if r == "negate" else 1.0 for r in rules], out.dtype)
                out = out * sign.reshape((-1,) + (1,) * (out.ndim - 1))
    if all(s.rot90 for s in specs) and x.shape[-1] == x.shape[-2]:
        out = np.rot90(out, int(rng.integers(4)), axes=(-2, -1))
    return np.ascontiguousarray(out)


def hue_saturation_matrix(theta: float, saturation: float) -> np.ndarray:
    """3 × 3 matrix that rotates RGB colours about the grey axis by ``theta`` radians (a hue shift) and scales their
    distance from it by ``saturation`` (0 = grey, 1 = unchanged). Grey levels, and hence brightness, are kept."""
    k = np.full(3, 1 / np.sqrt(3))
    grey = np.outer(k, k)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return grey + saturation * (np.cos(theta) * (np.eye(3) - grey) + np.sin(theta) * cross)


def augment_hue(x: np.ndarray, rng: np.random.Generator, *, p_grey: float = 0.2) -> np.ndarray:
    """A stain of another hue: the colours of an RGB cell ``(3, H, W)`` rotated about the grey axis by an angle drawn
    uniformly from the whole circle, their saturation scaled by a factor in [0.4, 1.6], or (probability ``p_grey``)
    removed. The relations between the colours of one cell (nucleus against granules against background) survive a
    common rotation; their absolute hue, which differs from site to site, does not. Returns float32."""
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"hue augmentation expects an RGB cell (3, H, W), got shape {x.shape}")
    if rng.random() < p_grey:
        m = hue_saturation_matrix(0.0, 0.0)
    else:
        m = hue_saturation_matrix(rng.uniform(-np.pi, np.pi), float(np.exp(rng.uniform(np.log(0.4), np.log(1.6)))))
    return np.ascontiguousarray(np.einsum("ij,jhw->ihw", m, x.astype(np.float32)), dtype=np.float32)


def augment_appearance(x: np.ndarray, rng: np.random.Generator, *, hue: float = 0.0) -> np.ndarray:
    """Site-to-site variation of a stained brightfield cell ``(C, H, W)``: scale, stain, blur and background.

    Drawn once per call, in this order: a zoom by a factor in [0.75, 1.3] about the centre (the frame refilled with
    each channel's border median, the background); a gamma in [0.7, 1.4] on the intensities scaled to the image's
    own range, then a random mixing of the channels (identity + N(0, 0.06²) per entry: a shift of stain hue) and a
    gain in [0.8, 1.2] per channel; with probability 0.4 a Gaussian blur of σ in [0.3, 1.2] px; and a linear
    illumination ramp of up to ±8 % across the frame. With ``hue`` > 0 (RGB cells only) the colour mixing is
    followed, with that probability, by :func:`augment_hue`, a shift of the stain's hue over the whole circle.
    Returns a new float32 array of the same shape. Per-image normalisation afterwards removes any remaining overall
    gain and offset.
    """
    from scipy import ndimage

    if x.ndim != 3:
        raise ValueError(f"appearance augmentation expects a 2D cell (C, H, W), got shape {x.shape}")
    a = x.astype(np.float32)
    c, h, w = a.shape
    bg = border_median(a)
    zoom = float(np.exp(rng.uniform(np.log(0.75), np.log(1.3))))
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    a = ndimage.affine_transform(a - bg[:, None, None], np.array([1.0, 1 / zoom, 1 / zoom]),
                                 offset=np.r_[0.0, centre - centre / zoom], order=1, mode="constant", cval=0.0)
    a += bg[:, None, None]
    lo, hi = float(a.min()), float(a.max())
    span = max(hi - lo, 1e-6)
    a = lo + span * ((a - lo) / span) ** rng.uniform(0.7, 1.4)
    mix = np.eye(c) + rng.normal(0.0, 0.06, size=(c, c))
    a = np.einsum("ij,jhw->ihw", mix, a) * rng.uniform(0.8, 1.2, size=(c, 1, 1))
    if hue >= 1 or (hue > 0 and rng.random() < hue):  # a share of 1 draws no number: its stream stays as it was
        a = augment_hue(a, rng)
    if rng.random() < 0.4:
        a = ndimage.gaussian_filter(a, sigma=(0, *(2 * [rng.uniform(0.3, 1.2)])), mode="nearest")
    yy, xx = np.mgrid[:h, :w]
    gy, gx = rng.uniform(-0.08, 0.08, size=2)
    a = a * (1.0 + gy * (yy / max(h - 1, 1) - 0.5) + gx * (xx / max(w - 1, 1) - 0.5))
    return np.ascontiguousarray(a, dtype=np.float32)


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def image_channel_names(path: str | Path) -> list[str] | None:
    """Channel names stored in one image file's metadata, or None when it carries none.

    Reads TIFF metadata only (no pixels): tifffile's JSON description ``{"Channel": {"Name": [...]}}`` (what the BSCCM
    reader writes), ImageJ slice ``Labels`` (taken when the labels of the first plane's channels repeat in every
    z-plane/time point) and OME-XML ``Pixels/Channel/@Name``. PNG, JPEG and BMP files carry no channel names.

    Raises:
        ImageError: the file cannot be opened, or its TIFF header cannot be parsed.
    """
    import tifffile

    from phenotyping.ingest._channels import tiff_channel_names

    p = Path(path)
    try:
        with p.open("rb") as fh:
            if fh.read(4) not in _TIFF_MAGIC:
                return None
        with tifffile.TiffFile(p) as tf:
            names = tiff_channel_names(tf)
    except OSError as e:
        raise ImageError(str(p), f"cannot read file ({e.strerror or e})") from e
    except Exception as e:  # tifffile raises TiffFileError, ValueError… for a corrupt header
        raise ImageError(str(p), f"cannot read the TIFF metadata: {e}") from e
    return names


def default_channel_names(c: int) -> list[str]:
    """The names given to ``c`` channels that carry none: red, green, blue for three, else ch0, ch1, …"""
    return ["red", "green", "blue"] if c == 3 else [f"ch{i}" for i in range(c)]


def channel_names_from_images(paths: Sequence[str | Path]) -> list[str] | None:
    """The channel names every image in ``paths`` carries (see :func:`image_channel_names`), or None if none has any.

    Raises:
        ValueError: two files disagree (different names, or names in one and none in the other); the message names
            both files and both lists.
    """
    first: tuple[Path, list[str] | None] | None = None
    for p in paths:
        names = image_channel_names(p)
        if first is None:
            first = (Path(p), names)
        elif names != first[1]:
            raise ValueError(f"the images disagree on their channel names: {first[0]} has "
                             f"{first[1] or 'none'}, {p} has {names or 'none'}; give every image the same channels "
                             "in the same order (or pass --channels to name them yourself)")
    return first[1] if first else None


# ----------------------------------------------------------------------------------------------------- images
def read_cell(path: str | Path) -> np.ndarray:
    """Decode one cell image file with the project's reader (channel-first, native dtype)."""
    from phenotyping.ingest import read_image

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(str(p), f"cannot read file ({e.strerror})") from e
    return read_image(data, str(p))


def load_images(paths: Sequence[str | Path], size: int, *, crop: str = "none",
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Read and size every image (``size_cell`` with ``crop``): float32 ``(N, C, size, size)`` (or
    ``(N, C, Z, size, size)``).

    Raises ImageError naming the first file whose channel count or dimensionality differs from the first image's.
    """
    out: np.ndarray | None = None
    for i, p in enumerate(paths):
        raw = read_cell(p)
        try:
            a = size_cell(raw, size, crop=crop)
        except ValueError as e:
            raise ImageError(str(p), str(e)) from e
        if out is None:
            out = np.empty((len(paths),) + a.shape, np.float32)
        elif a.shape != out.shape[1:]:
            raise ImageError(str(p), f"shape after resizing {a.shape} differs from the first image's "
                                     f"{out.shape[1:]} (channels or z-planes differ)")
        out[i] = a
        if progress and (i + 1) % 500 == 0:
            progress(i + 1, len(paths))
    if out is None:
        raise ValueError("no images to load")
    return out


def parse_targets(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> np.ndarray:
    """Target columns as float64 (N, M); empty cells become NaN; raises ValueError naming a non-numeric value."""
    out = np.full((len(rows), len(names)), np.nan)
    for j, n in enumerate(names):
        for i, v in enumerate(column(rows, n)):
            if v.strip() in ("", "nan", "NA"):
                continue
            try:
                out[i, j] = float(v)
            except ValueError:
                raise ValueError(f"target column {n!r} row {i + 2}: {v!r} is not a number") from None
    return out


# ----------------------------------------------------------------------------------------------------- splits
def split_indices(labels: Sequence[str], groups: Sequence[str] | None = None, *, val_fraction: float = 0.15,
                  test_fraction: float = 0.15, seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified train/val/test split; with ``groups``, whole groups go to one split (no group leaks).

    Uses scikit-learn's ``StratifiedShuffleSplit`` (no groups) or ``StratifiedGroupKFold`` (groups; the fold sizes
    follow from the fractions). Returns sorted index arrays ``{"train", "val", "test"}`` (``test`` may be empty when
    ``test_fraction`` is 0).

    Raises:
        ValueError: a grouped split would leave a class with no training cell — the groups are confounded with the
            classes (e.g. every group holds only one or two classes) — or a split would be empty.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    y = np.asarray(labels)
    n = len(y)
    idx = np.arange(n)
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need 0 < val_fraction, 0 ≤ test_fraction, sum < 1; got {val_fraction}, {test_fraction}")

    def holdout(sub: np.ndarray, frac: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        ys = y[sub]
        if groups is None:
            counts = np.unique(ys, return_counts=True)[1]
            strat = ys if counts.min() >= 2 else None
            if strat is None:
                from sklearn.model_selection import ShuffleSplit
                sp = ShuffleSplit(1, test_size=frac, random_state=seed + salt)
            else:
                sp = StratifiedShuffleSplit(1, test_size=frac, random_state=seed + salt)
            a, b = next(sp.split(sub, strat if strat is not None else ys))
            return sub[a], sub[b]
        g = np.asarray(groups)[sub]
        n_groups = len(np.unique(g))
        if n_groups < 2:
            raise ValueError(f"a grouped hold-out needs at least 2 groups; only {n_groups} remain; add groups or "
                             "split without a group column")
        k = max(2, min(round(1 / frac), n_groups))   # fewer groups than 1/frac: larger hold-out, see split sizes
        a, b = next(StratifiedGroupKFold(k, shuffle=True, random_state=seed + salt).split(sub, ys, g))
        return sub[a], sub[b]

    rest, test = holdout(idx, test_fraction, 1) if test_fraction > 0 else (idx, idx[:0])
    train, val = holdout(rest, val_fraction / (1 - test_fraction), 2)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"the split left an empty train or validation set ({n} cells); add data")
    if groups is not None:
        missing = sorted(str(c) for c in set(np.concatenate([y[val], y[test]])) - set(y[train]))
        if missing:
            by_group: dict[str, set[str]] = {}
            for gi, yi in zip(groups, y):
                by_group.setdefault(str(gi), set()).add(str(yi))
            table = "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(by_group.items())[:12])
            raise ValueError(f"splitting by the group column leaves class(es) {missing} with no training cell: "
                             f"the groups are confounded with the classes ({table}). Use a group column whose "
                             "groups each hold several classes, or split without --group-column")
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def class_weights(y: np.ndarray, num_classes: int, power: float = 1.0) -> np.ndarray:
    """Balanced class weights ``(n / (K · n_k))^power`` (classes absent from ``y`` get weight 0), float32 (K,).

    ``power`` 1 is fully balanced, 0.5 the square root (rare classes still learnt, without trading as much accuracy
    on the common ones), 0 unweighted (every present class 1)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, (len(y) / (num_classes * np.maximum(counts, 1))) ** power, 0.0)
    return w.astype(np.float32)


class CellDataset:
    """Indexable (image, class, targets) triples for a ``torch.utils.data.DataLoader``.

    ``images`` are fitted to size but not normalised; augmentation (if ``rng_seed`` is given) happens before
    normalisation so sign flips of DPC channels act on the physical values; ``appearance`` adds
    :func:`augment_appearance` (stained brightfield cells from several sites), ``hue`` the probability of its hue shift.
    ``set_epoch`` reseeds augmentation so runs are reproducible.
    """

    def __init__(self, images: np.ndarray, y: np.ndarray, targets: np.ndarray, pre: Preprocess, *,
                 augment_seed: int | None = None, appearance: bool = False, hue: float = 0.0):
        self.images, self.y, self.targets, self.pre = images, y, targets, pre
        self.specs = pre.specs()
        self.augment_seed = augment_seed
        self.appearance = appearance
        self.hue = hue
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, np.ndarray]:
        x = self.images[i]
        if self.augment_seed is not None:
            rng = np.random.default_rng((self.augment_seed, self.epoch, i))
            x = augment(x, self.specs, rng)
            if self.appearance:
                x = augment_appearance(x, rng, hue=self.hue)
        return self.pre.normalise(x), int(self.y[i]), self.targets[i]


def stratified_fraction(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified subset holding ``fraction`` of each class, and at least two cells of every class that
    has two (a calibrated classifier needs two: Platt scaling and temperature fits cross-validate within a class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.permutation(idx)[:max(2, math.ceil(fraction * len(idx)))])
    return np.sort(np.concatenate(keep))
