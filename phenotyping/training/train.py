"""Train a cell model from a manifest and write a model folder (checkpoint + model card), top to bottom.

Steps: read rows → split (stratified; grouped when a group column is given) → read and size images → per-channel
normalisation and target standardisation fitted on the training split → fit (neural: AdamW, cosine learning rate,
multi-task loss with balanced, square-root or no class weights, early stopping on validation macro-F1 + mean
Pearson; classical: one fit) → temperature scaling and the review threshold on the validation split → card.
Everything random is seeded from ``TrainConfig.seed``; on CPU a rerun with the same seed gives the same weights.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from phenotyping.analysis.prior import class_weight_power, class_weighting_text
from phenotyping.models.crop import RESIZE_TEXT as CROP_RESIZE

INTENDED_USE = "research model, not clinically validated"


@dataclass(frozen=True)
class TrainConfig:
    """Training options (saved in the card).

    ``img_size`` None: the first image's longer side, capped at ``max_img_size``. ``fraction``: stratified share of
    the training split actually used (data-volume curves). ``classes``: keep only these labels (others dropped and
    counted). ``channels``: channel names (DPC names get direction-aware augmentation, see ``data.CHANNEL_PRESETS``);
    None reads them from the images' metadata (all images must agree), else generic names treated as symmetric.
    ``model_overrides``: extra ``create_model`` keywords. ``normalisation``: ``"dataset"`` or ``"per_image"`` (see
    ``data.Preprocess``). ``augment_appearance``: also scale, stain, blur and background augmentation
    (``data.augment_appearance``; 2D), ``augment_hue`` with a hue shift in that share of draws (RGB).
    ``crop``: ``"none"`` or ``"nucleus"``. ``class_weights``: a key of ``analysis.prior.CLASS_WEIGHTINGS`` (neural).
    ``embed_model``: a trained neural model's folder; a kNN/SVM ``arch`` is then fitted on that model's penultimate
    features instead of pixels, with that model's preprocessing (size, channels, normalisation).
    ``specimens`` / ``specimen_names``: the card's specimens section, whole or as names with roles from the class
    names (default: from the class names; see ``phenotyping.analysis.specimens.build_section``).
    """

    arch: str = "hybrid"
    epochs: int = 30
    seed: int = 0
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    patience: int = 6
    loss: str = "uncertainty"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    img_size: int | None = None
    max_img_size: int = 64
    fraction: float = 1.0
    log_targets: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None
    channels: tuple[str, ...] | None = None
    augment: bool = True
    augment_appearance: bool = False
    augment_hue: float = 0.0
    class_weights: str = "balanced"
    normalisation: str = "dataset"
    crop: str = "none"
    data_licence: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    embed_model: str | None = None
    specimens: dict[str, Any] | None = None
    specimen_names: tuple[str, ...] = ()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    import sklearn
    import torch

    import phenotyping
    import phenotyping._tv_shim  # noqa: F401
    import timm

    return {"python": platform.python_version(), "phenotyping": phenotyping.__version__, "torch": torch.__version__,
            "timm": timm.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def _check_unique_ids(ids: Sequence[str], rows: Sequence[dict[str, Any]], manifest: Path) -> None:
    """split.csv and ``evaluate --split`` find cells by cell_id: a repeated id would put a cell in the wrong split."""
    seen: dict[str, int] = {}
    for i, cid in enumerate(ids):
        if cid in seen:
            raise ValueError(f"{manifest}: cell_id {cid!r} is used twice ({rows[seen[cid]]['path']} and "
                             f"{rows[i]['path']}); split.csv matches cells by cell_id, so give every cell its own id")
        seen[cid] = i


def _embedding_model(config: TrainConfig, classical: bool, log: Callable[[str], None]) -> Any:
    """Load the neural model whose penultimate features a kNN/SVM is fitted on (``--embed-model``)."""
    from phenotyping.models.checkpoint import load_model_dir

    if not classical:
        raise ValueError(f"--embed-model fits a kNN/SVM on a neural model's features; --arch {config.arch} is not "
                         "a classical model (use knn or svm)")
    emb = load_model_dir(config.embed_model)          # FileNotFoundError names what the folder holds
    if not getattr(emb.model, "is_neural", True):
        raise ValueError(f"--embed-model {config.embed_model} is a {emb.card['architecture']['name']} model; the "
                         "embedding must come from a neural model (hybrid, cnn, resnet18, vit_small…)")
    log(f"embedding: penultimate features of {emb.id} ({emb.card['architecture']['name']}); preprocessing (size "
        f"{emb.preprocess.img_size}, channels {', '.join(emb.preprocess.channels)}, {emb.preprocess.mode} "
        "normalisation) from that model")
    return emb


def _embedding_channels(emb: Any, config: TrainConfig, paths: Sequence[Path], n_chans: int, dims: int,
                        log: Callable[[str], None]) -> tuple[list[str], str]:
    """The embedding model's channel names, checked against the images (count, 2D/3D, and names where known)."""
    from phenotyping.training.data import channel_names_from_images, default_channel_names

    mc = emb.model.config
    if n_chans != mc["in_chans"] or dims != mc.get("dims", 2):
        kind = {2: "2D", 3: "z-stacks"}
        raise ValueError(f"the images have {n_chans} channel(s) ({kind[dims]}) but the embedding model {emb.id} "
                         f"takes {mc['in_chans']} ({kind[mc.get('dims', 2)]})")
    names = list(emb.preprocess.channels)
    given = list(config.channels) if config.channels else channel_names_from_images(paths)
    if given is not None and [g.lower() for g in given] != [n.lower() for n in names]:
        generic = str(emb.card.get("input", {}).get("channel_names_from", "")).startswith("generic") or \
            names == default_channel_names(len(names))
        if not generic:
            raise ValueError(f"the images' channels are {given} but the embedding model {emb.id} was trained on "
                             f"{names}; use images with those channels in that order")
        log(f"note: the embedding model {emb.id} calls its channels {', '.join(names)}; these images name them "
            f"{', '.join(given)}: taken to be the same channels in the same order")
    return names, f"embedding model {emb.id}"


def _channel_names(config: TrainConfig, paths: Sequence[Path], n_chans: int,
                   log: Callable[[str], None]) -> tuple[list[str], str]:
    """Channel names and where they came from: ``--channels``, else the images' metadata, else generic names
    (said on stderr: generic channels are treated as symmetric under flips and rotations)."""
    from phenotyping.training.data import channel_names_from_images, default_channel_names

    found = channel_names_from_images(paths)
    if config.channels:
        names = list(config.channels)
        if len(names) != n_chans:
            raise ValueError(f"--channels names {len(names)} channels ({names}) but the images have {n_chans}")
        if found is not None and [f.lower() for f in found] != [n.lower() for n in names]:
            log(f"note: --channels {', '.join(names)} differ from the names in the images' metadata "
                f"({', '.join(found)}); using --channels, in that order")
        return names, "--channels"
    if found is not None:
        if len(found) != n_chans:
            raise ValueError(f"{paths[0]} names {len(found)} channels in its metadata ({found}) but its image has "
                             f"{n_chans}; fix the file's metadata or pass --channels")
        log(f"channels from the images' metadata: {', '.join(found)}")
        return found, "image metadata"
    names = default_channel_names(n_chans)
    log(f"note: the images carry no channel names and --channels was not given: channels {', '.join(names)} are "
        "treated as symmetric under flips and 90° rotations. If any is direction-dependent (DPC), name the channels "
        "with --channels (e.g. dpc_left,dpc_right or DPC) to get direction-aware augmentation")
    return names, "generic (no names in the images, no --channels): treated as symmetric"


def _score(metrics: dict[str, Any]) -> float:
    """Early-stopping score: validation macro-F1 plus mean Pearson r over targets (undefined r counts as 0)."""
    rs = [v["pearson"] or 0.0 for v in metrics.get("targets", {}).values()]
    return metrics["macro_f1"] + (float(np.mean(rs)) if rs else 0.0)


@dataclass
class _Cells:
    """The manifest's cells that training uses (after ``--classes``), in manifest order."""

    rows: list[dict[str, Any]]
    labels: list[str]
    classes: list[str]
    y: np.ndarray                          # (N,) int64 index into classes
    targets: np.ndarray                    # (N, T) raw targets in manifest units; (N, 0) without target columns
    groups: list[str] | None
    ids: list[str]


@dataclass
class _Inputs:
    """What the model sees, per split (``"train"``, ``"val"``, ``"test"``), and the preprocessing that made it."""

    img_size: int
    dims: int                              # 2, or 3 for z-stacks
    n_chans: int
    channels: list[str]
    channels_from: str
    pre: Any                               # Preprocess (fitted here, or the embedding model's)
    scaler: Any                            # TargetScaler, or None without target columns
    x: dict[str, np.ndarray | None]        # raw images (n, C, H, W) or (n, C, Z, H, W); None for an empty split
    xn: dict[str, np.ndarray | None]       # the same, normalised by pre
    y: dict[str, np.ndarray]               # (n,) class indices
    z: dict[str, np.ndarray]               # (n, T) standardised targets
    truth: dict[str, np.ndarray]           # (n, T) raw targets, for the regression metrics


@dataclass
class _Fit:
    """What fitting leaves for the card."""

    n_params: int
    loss_weights: dict[str, Any] | None
    history: list[dict[str, Any]]
    best_epoch: int


@dataclass
class _Evaluation:
    """Validation metrics, calibration on the validation split, test metrics (None without a test split)."""

    validation: dict[str, Any]
    test: dict[str, Any] | None
    val_probabilities: np.ndarray          # (n_val, K), temperature-scaled
    temperature: float
    threshold: float
    threshold_info: dict[str, Any]


def train(manifest: str | Path, label_column: str, out: str | Path, *, target_columns: Sequence[str] = (),
          group_column: str | None = None, config: TrainConfig = TrainConfig(),
          log: Callable[[str], None] = _stderr, card_extra: dict[str, Any] | None = None,
          device: str | None = None) -> dict[str, Any]:
    """Train ``config.arch`` on the cells of ``manifest`` and write ``out`` (checkpoint + model_card.json + split.csv).

    ``device``: where a neural model trains (``auto``, ``cpu``, ``cuda``; None reads ``LEUKO_DEVICE``), with mixed
    precision and pinned memory on CUDA only (:mod:`phenotyping.training.device`); the card records it.

    Returns the model card; ``card_extra`` sections (e.g. ``cross_validation``) are added to it before it is written.
    Raises ValueError/KeyError/PhenotypingError for unusable input (missing columns, confounded groups, too few cells).
    """
    import torch

    from phenotyping.analysis.specimens import build_section
    from phenotyping.models._registry import model_family
    from phenotyping.models.checkpoint import save_model_dir
    from phenotyping.training.device import device_plan
    from phenotyping.training.licence import data_licence

    plan = device_plan(device)
    t_start = time.perf_counter()
    manifest, out = Path(manifest), Path(out)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    cells = _read_cells(manifest, label_column, target_columns, group_column, config.classes, log)
    specimens = build_section(cells.classes, specimens=config.specimen_names, given=config.specimens)
    log(f"specimens the card declares: {json.dumps(specimens) if specimens else 'none (no clinical specimen)'}")
    licence_text, licence = data_licence(manifest, config.data_licence)
    if licence["note"]:
        log(f"note: {licence['note']}")
    split = _split(cells, group_column, config, log)

    classical = model_family(config.arch) == "classical"
    emb = _embedding_model(config, classical, log) if config.embed_model else None
    data = _prepare_inputs(cells, split, target_columns, config, classical=classical, emb=emb, log=log)
    model, cfg = _build_model(config, data, len(cells.classes), len(target_columns), emb, out)

    if getattr(model, "is_neural", True):
        fit = _fit_neural(model, data, cells.classes, target_columns, config, log, plan)
    else:
        fit = _fit_classical(model, data, config, log)
    model.eval()
    ev = _calibrate_and_test(model, data, cells.classes, target_columns)
    wall = time.perf_counter() - t_start

    card = _card(manifest=manifest, out=out, label_column=label_column, target_columns=target_columns,
                 group_column=group_column, config=config, cells=cells, split=split, data=data, model=model, cfg=cfg,
                 emb=emb, fit=fit, ev=ev, licence_text=licence_text, licence=licence, wall=wall)
    card["training"]["device"] = plan.describe() if getattr(model, "is_neural", True) else "cpu"
    _add_post_fit_sections(card, cells, split, ev, config.seed, log)
    card["specimens"] = specimens
    card.update(card_extra or {})
    save_model_dir(out, model, card, preprocess=data.pre, targets=data.scaler)
    _write_split(out / "split.csv", cells.ids, split)
    if getattr(model, "is_neural", True):  # the domain reference needs the model's penultimate features
        from phenotyping.training.postfit import calibrate_domain_dir

        card["domain"] = calibrate_domain_dir(out, manifest, seed=config.seed)
    log(f"wrote {out} in {wall:.1f}s: val accuracy {ev.validation['accuracy']:.3f}, "
        f"macro-F1 {ev.validation['macro_f1']:.3f}, T = {ev.temperature:.2f}, review threshold {ev.threshold:.2f}")
    return card


def _read_cells(manifest: Path, label_column: str, target_columns: Sequence[str], group_column: str | None,
                keep: tuple[str, ...] | None, log: Callable[[str], None]) -> _Cells:
    """The manifest's rows with their labels, targets, groups and ids; only the classes in ``keep`` when given."""
    from phenotyping.training.data import column, load_rows, parse_targets

    rows = load_rows(manifest, label_column=label_column)
    labels = column(rows, label_column)
    if keep is not None:
        kept = [i for i, lab in enumerate(labels) if lab in keep]
        dropped = len(rows) - len(kept)
        absent = [c for c in keep if c not in set(labels)]
        if absent:
            raise ValueError(f"--classes {absent} do not occur in column {label_column!r}; "
                             f"labels present: {sorted(set(labels))}")
        if dropped:
            log(f"dropped {dropped} cells whose {label_column} is not one of {list(keep)}")
        rows, labels = [rows[i] for i in kept], [labels[i] for i in kept]
        classes = list(keep)
    else:
        classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"column {label_column!r} has {len(classes)} class(es); need at least 2")
    y = np.array([classes.index(lab) for lab in labels], np.int64)
    targets = parse_targets(rows, target_columns) if target_columns else np.zeros((len(rows), 0))
    groups = column(rows, group_column) if group_column else None
    ids = column(rows, "cell_id") if rows and "cell_id" in rows[0] else [str(r["path"]) for r in rows]
    _check_unique_ids(ids, rows, manifest)
    return _Cells(rows=rows, labels=labels, classes=classes, y=y, targets=targets, groups=groups, ids=ids)


def _split(cells: _Cells, group_column: str | None, config: TrainConfig,
           log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Train/val/test indices into ``cells`` (stratified; grouped when a group column is given), the training split
    cut to a stratified ``config.fraction`` of itself."""
    from phenotyping.training.data import split_indices, stratified_fraction

    split = split_indices(cells.labels, cells.groups, val_fraction=config.val_fraction,
                          test_fraction=config.test_fraction, seed=config.seed)
    train_idx = split["train"]
    if config.fraction < 1:
        train_idx = train_idx[stratified_fraction(cells.y[train_idx], config.fraction, config.seed)]
    log(f"split: train {len(train_idx)} (of {len(split['train'])}), val {len(split['val'])}, "
        f"test {len(split['test'])} cells" + (f"; grouped by {group_column}" if group_column else ""))
    return {"train": train_idx, "val": split["val"], "test": split["test"]}


def _image_size(first_path: Path, config: TrainConfig, emb: Any) -> int:
    """The model's input side: the embedding model's, else ``--img-size``, else the first image's longer side
    capped at ``config.max_img_size``."""
    from phenotyping.training.data import read_cell

    if emb is not None:
        img_size = emb.preprocess.img_size
        if config.img_size and config.img_size != img_size:
            raise ValueError(f"--img-size {config.img_size} differs from the embedding model's input size {img_size}; "
                             "drop --img-size (the embedding model's preprocessing is used)")
        return img_size
    first = read_cell(first_path)
    return config.img_size or min(int(max(first.shape[-2:])), config.max_img_size)


def _prepare_inputs(cells: _Cells, split: dict[str, np.ndarray], target_columns: Sequence[str],
                    config: TrainConfig, *, classical: bool, emb: Any, log: Callable[[str], None]) -> _Inputs:
    """Read and size the images of every split, name the channels, fit the normalisation and the target
    standardisation on the training split (or take the embedding model's preprocessing)."""
    from phenotyping.models.preprocess import TargetScaler
    from phenotyping.training.data import check_hue_augmentation, load_images

    rows = cells.rows
    used = np.concatenate([split["train"], split["val"], split["test"]])
    img_size = _image_size(rows[int(used[0])]["path"], config, emb)
    t0 = time.perf_counter()
    crop = emb.preprocess.crop if emb is not None else config.crop
    x = {k: load_images([rows[i]["path"] for i in ix], img_size, crop=crop) if len(ix) else None
         for k, ix in split.items()}
    log(f"read {len(used)} images at {img_size}×{img_size}, crop {crop}, in {time.perf_counter() - t0:.1f}s")
    n_chans = x["train"].shape[1]
    dims = 3 if x["train"].ndim == 5 else 2
    check_hue_augmentation(config.augment_hue, config.augment_appearance, n_chans, dims)
    names, names_from, pre = _preprocessing(x["train"], [rows[int(i)]["path"] for i in used], n_chans, dims, config,
                                            classical=classical, emb=emb, log=log)
    scaler = None
    if target_columns:
        log_flags = [t in config.log_targets for t in target_columns]
        scaler = TargetScaler.fit(cells.targets[split["train"]], target_columns, log_flags)
    z = scaler.transform(cells.targets) if scaler else np.zeros((len(rows), 0), np.float32)
    return _Inputs(img_size=img_size, dims=dims, n_chans=n_chans, channels=names, channels_from=names_from, pre=pre,
                   scaler=scaler, x=x, xn={k: pre.normalise(v, batched=True) if v is not None else None
                                            for k, v in x.items()},
                   y={k: cells.y[idx] for k, idx in split.items()}, z={k: z[idx] for k, idx in split.items()},
                   truth={k: cells.targets[idx] for k, idx in split.items()})


def _preprocessing(train_images: np.ndarray, paths: Sequence[Path], n_chans: int, dims: int, config: TrainConfig, *,
                   classical: bool, emb: Any, log: Callable[[str], None]) -> tuple[list[str], str, Any]:
    """Channel names, where they came from, and the ``Preprocess``: the embedding model's, else fitted on
    ``train_images`` (said on stderr: the augmentation the channel names give a neural model)."""
    from phenotyping.models.preprocess import Preprocess, channel_specs
    from phenotyping.training.data import describe_augmentation

    if emb is not None:
        names, names_from = _embedding_channels(emb, config, paths, n_chans, dims, log)
        return names, names_from, emb.preprocess
    names, names_from = _channel_names(config, paths, n_chans, log)
    specs = channel_specs(names)
    if config.augment and not classical:
        log(f"augmentation: {describe_augmentation(specs, config.augment_appearance, config.augment_hue)}")
    return names, names_from, Preprocess.fit(train_images, names, specs, mode=config.normalisation,
                                             crop=config.crop)


def _build_model(config: TrainConfig, data: _Inputs, n_classes: int, n_targets: int, emb: Any,
                 out: Path) -> tuple[Any, dict[str, Any]]:
    """``create_model(config.arch, …)`` for these inputs (wrapped around the embedding model when there is one),
    and the keywords it was built with."""
    from phenotyping.models import create_model
    from phenotyping.models.checkpoint import embedding_source
    from phenotyping.models.classical import EmbeddedClassicalModel

    cfg = dict(in_chans=data.n_chans, num_classes=n_classes, num_targets=n_targets, img_size=data.img_size,
               **config.model_overrides)
    if data.dims == 3 and "3d" not in config.arch and emb is None:
        raise ValueError(f"the images are z-stacks (C, Z, H, W) but --arch {config.arch} is 2D; use a 3D variant "
                         "such as hybrid3d or cnn3d")
    model = create_model(config.arch, **cfg)
    if emb is not None:
        model = EmbeddedClassicalModel(model, emb.model, embedding_source(emb.path, out, emb))
    return model, cfg


def _metrics(model: Any, data: _Inputs, split: str, classes: Sequence[str], target_columns: Sequence[str], *,
             device: str = "cpu") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Classification metrics of ``model`` on one split (per-target regression metrics in manifest units under
    ``"targets"``), and its outputs (``logits`` (n, K), ``regression`` (n, T))."""
    from phenotyping.models.forward import predict_arrays
    from phenotyping.training.evaluate import classification_metrics, regression_metrics

    o = predict_arrays(model, data.xn[split], device=device)
    met = classification_metrics(data.y[split], o["logits"].argmax(1), classes)
    met["targets"] = regression_metrics(data.truth[split], data.scaler.inverse(o["regression"]),
                                        target_columns) if data.scaler else {}
    return met, o


def _fit_neural(model: Any, data: _Inputs, classes: Sequence[str], target_columns: Sequence[str],
                config: TrainConfig, log: Callable[[str], None], plan: Any) -> _Fit:
    """AdamW on the multi-task loss (``config.class_weights``), one epoch of linear warm-up then a cosine learning
    rate; early stopping on :func:`_score` of the validation split. Trains on ``plan.device``
    (:class:`~phenotyping.training.device.DevicePlan`); leaves ``model`` on the CPU with its best epoch's weights."""
    import torch

    from phenotyping.training.data import CellDataset, class_weights
    from phenotyping.training.device import train_epoch
    from phenotyping.training.losses import make_loss

    n_params = sum(p.numel() for p in model.parameters())
    weights = torch.from_numpy(class_weights(data.y["train"], len(classes), class_weight_power(config.class_weights)))
    loss_fn = make_loss(config.loss, len(target_columns), weights).to(plan.device)
    model.to(plan.device)
    log(f"training on {plan.describe()}")
    params = [{"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
              {"params": list(loss_fn.parameters()), "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=config.lr)
    ds = CellDataset(data.x["train"], data.y["train"], data.z["train"], data.pre,
                     augment_seed=config.seed if config.augment else None,
                     appearance=config.augment and config.augment_appearance, hue=config.augment_hue)
    gen = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=config.batch_size, shuffle=True, generator=gen,
                                         drop_last=len(ds) > config.batch_size, pin_memory=plan.pin_memory)
    scaler = plan.scaler()
    steps = max(1, config.epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, len(loader))) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    history: list[dict[str, Any]] = []
    best_score, best_state, best_epoch, waited = -math.inf, None, 0, 0
    loss_weights: dict[str, Any] | None = None
    for epoch in range(1, config.epochs + 1):
        t_ep = time.perf_counter()
        ds.set_epoch(epoch)
        train_loss = train_epoch(model, loader, loss_fn, opt, sched, plan, scaler)
        model.eval()
        met, _ = _metrics(model, data, "val", classes, target_columns, device=plan.device)
        score = _score(met)
        rs = {k: v["pearson"] for k, v in met["targets"].items()}
        history.append({"epoch": epoch, "train_loss": train_loss, "val_accuracy": met["accuracy"],
                        "val_macro_f1": met["macro_f1"], "val_pearson": rs})
        improved = score > best_score + 1e-4
        if improved:
            best_score, best_state, best_epoch, waited = score, copy.deepcopy(model.state_dict()), epoch, 0
            loss_weights = loss_fn.describe(list(target_columns))
        else:
            waited += 1
        r_txt = " ".join(f"r[{k}] {v:.3f}" for k, v in rs.items() if v is not None)
        log(f"epoch {epoch}/{config.epochs} loss {train_loss:.4f} val acc {met['accuracy']:.3f} "
            f"macro-F1 {met['macro_f1']:.3f} {r_txt} ({time.perf_counter() - t_ep:.1f}s)"
            + (" *" if improved else ""))
        if waited >= config.patience:
            log(f"early stop: no validation improvement for {config.patience} epochs; best epoch {best_epoch}")
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.to("cpu")
    return _Fit(n_params=n_params, loss_weights=loss_weights, history=history, best_epoch=best_epoch)


def _fit_classical(model: Any, data: _Inputs, config: TrainConfig, log: Callable[[str], None]) -> _Fit:
    """One fit of a kNN/SVM on the normalised training images (or their embeddings)."""
    t_fit = time.perf_counter()
    model.fit(data.xn["train"], data.y["train"], data.z["train"] if data.scaler else None)
    log(f"fitted {config.arch} on {len(data.y['train'])} cells in {time.perf_counter() - t_fit:.1f}s")
    return _Fit(n_params=0, loss_weights=None, history=[], best_epoch=0)


def _calibrate_and_test(model: Any, data: _Inputs, classes: Sequence[str],
                        target_columns: Sequence[str]) -> _Evaluation:
    """Validation metrics, temperature scaling and the review threshold on the validation split, test metrics."""
    from phenotyping.models.forward import softmax
    from phenotyping.training.calibration import fit_temperature, unidentified_threshold

    met, o = _metrics(model, data, "val", classes, target_columns)
    temperature = fit_temperature(o["logits"], data.y["val"])
    probs = softmax(o["logits"], temperature)
    threshold, info = unidentified_threshold(probs, data.y["val"])
    test = _metrics(model, data, "test", classes, target_columns)[0] if data.xn["test"] is not None else None
    return _Evaluation(validation=met, test=test, val_probabilities=probs, temperature=temperature,
                       threshold=threshold, threshold_info=info)


def _card(*, manifest: Path, out: Path, label_column: str, target_columns: Sequence[str], group_column: str | None,
          config: TrainConfig, cells: _Cells, split: dict[str, np.ndarray], data: _Inputs, model: Any,
          cfg: dict[str, Any], emb: Any, fit: _Fit, ev: _Evaluation, licence_text: str, licence: dict[str, Any],
          wall: float) -> dict[str, Any]:
    """The model card, less the post-fit sections (:func:`_add_post_fit_sections`)."""
    classes, scaler, pre = cells.classes, data.scaler, data.pre
    digest = hashlib.sha256(json.dumps([config.arch, cfg, classes, str(manifest.name), config.seed,
                                        len(split["train"]), fit.best_epoch] + ([emb.id] if emb is not None else []),
                                       sort_keys=True, default=str).encode()).hexdigest()[:10]
    train_counts = np.bincount(data.y["train"], minlength=len(classes))
    return {
        "id": f"{out.name}-{digest}",
        "name": out.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
        "architecture": {"name": config.arch, "config": dict(model.config), "parameters": int(fit.n_params)},
        "embedding_model": dict(model.source) if emb is not None else None,
        "input": {"channels": data.channels, "channel_names_from": data.channels_from,
                  "channel_specs": pre.channel_specs, "img_size": data.img_size, "dims": data.dims,
                  "resize": CROP_RESIZE[pre.crop], "crop": pre.crop,
                  "normalisation": {"mode": pre.mode, "mean": pre.mean, "std": pre.std}},
        "classes": classes,
        "targets": [{"name": n, "log": lg, "mean": m, "std": s} for n, lg, m, s in
                    zip(scaler.names, scaler.log, scaler.mean, scaler.std)] if scaler else [],
        "training": {"manifest": str(manifest), "data_licence": licence_text,
                     "data_licence_terms": licence,
                     "n_cells": len(cells.rows), "label_column": label_column, "target_columns": list(target_columns),
                     "group_column": group_column, "config": {**asdict(config), "img_size": data.img_size},
                     "class_weighting": class_weighting_text(config.class_weights) if getattr(model, "is_neural", True)
                     else ("SVM class_weight=balanced" if model.config.get("kind") == "svm" else "none (kNN)"),
                     "class_proportions": {c: float(n / max(train_counts.sum(), 1))
                                           for c, n in zip(classes, train_counts)},
                     "loss_weights": fit.loss_weights,
                     "best_epoch": fit.best_epoch, "epochs_run": len(fit.history), "history": fit.history,
                     "wall_time_s": round(wall, 1)},
        "split": {"method": ("StratifiedGroupKFold hold-outs by " + group_column) if group_column else
                  "stratified random hold-outs (StratifiedShuffleSplit)",
                  "val_fraction": config.val_fraction, "test_fraction": config.test_fraction, "seed": config.seed,
                  "n": {k: len(idx) for k, idx in split.items()},
                  "file": "split.csv"},
        "validation": ev.validation,
        "test": ev.test,
        "calibration": {"temperature": ev.temperature, "unidentified_threshold": ev.threshold, **ev.threshold_info,
                        "method": "temperature scaling on the validation split (Guo et al. 2017)"},
        "software": _versions(),
    }


def _add_post_fit_sections(card: dict[str, Any], cells: _Cells, split: dict[str, np.ndarray], ev: _Evaluation,
                           seed: int, log: Callable[[str], None]) -> None:
    """Write into ``card`` the prior the probabilities assume, the confident confusion and the image-QC limits
    (:mod:`phenotyping.training.postfit`), the latter from up to 2000 training images (a seeded random subset)."""
    from phenotyping.training.data import read_cell
    from phenotyping.training.postfit import apply_sections, card_sections

    qc_pick = np.random.default_rng(seed).permutation(split["train"])[:2000]
    train_y = cells.y[split["train"]]
    apply_sections(card, card_sections(
        classes=cells.classes, train_counts=np.bincount(train_y, minlength=len(cells.classes)).tolist(),
        class_weighting=card["training"]["class_weighting"], val_probabilities=ev.val_probabilities,
        val_y=cells.y[split["val"]], threshold=ev.threshold,
        train_images=[read_cell(cells.rows[int(i)]["path"]) for i in sorted(qc_pick)]))
    log(f"image QC from {len(qc_pick)} training images: {card['qc_calibration']['training_pass_rate']:.1%} pass"
        + (f"; disabled: {card['qc_calibration']['disabled']}" if card["qc_calibration"]["disabled"] else ""))


def _write_split(path: Path, ids: Sequence[str], split: dict[str, np.ndarray]) -> None:
    """``split.csv``: each used cell's id and its split, in manifest order."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "split"])
        which = {int(i): k for k in ("train", "val", "test") for i in split[k]}
        for i in sorted(which):
            w.writerow([ids[i], which[i]])
