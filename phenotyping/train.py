"""Train a cell model from a manifest and write a model folder (checkpoint + model card), top to bottom.

Steps: read rows → split (stratified; grouped when a group column is given) → read and size images → per-channel
normalisation and target standardisation fitted on the training split → fit (neural: AdamW, cosine learning rate,
uncertainty-weighted multi-task loss with balanced class weights, early stopping on validation macro-F1 + mean
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


INTENDED_USE = "research model, not clinically validated"
CLASS_WEIGHTING = "balanced class weights n/(K·n_k) in the cross-entropy; no over-sampling (corrected once)"


@dataclass(frozen=True)
class TrainConfig:
    """Training options (saved in the card).

    ``img_size`` None: the first image's longer side, capped at ``max_img_size``. ``fraction``: stratified share of
    the training split actually used (data-volume curves). ``classes``: keep only these labels (others dropped and
    counted). ``channels``: channel names (DPC names get direction-aware augmentation, see ``data.CHANNEL_PRESETS``);
    None reads them from the images' metadata (all images must agree), else generic names treated as symmetric.
    ``model_overrides``: extra ``create_model`` keywords.
    ``normalisation``: ``"dataset"`` or ``"per_image"`` (see ``data.Preprocess``).
    ``embed_model``: a trained neural model's folder; a kNN/SVM ``arch`` is then fitted on that model's penultimate
    features instead of pixels, with that model's preprocessing (size, channels, normalisation).
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
    normalisation: str = "dataset"
    data_licence: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    embed_model: str | None = None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# Licences whose terms require derived works to be shared under the same licence (strong or weak copyleft,
# share-alike), matched against SPDX-style ids.
_COPYLEFT = r"^(A|L)?GPL|^MPL|^EUPL|^ODbL|^CC-BY(-NC)?-SA"
_SPDX_IN_TEXT = (r"\b((?:A|L)?GPL-\d\.\d(?:-only|-or-later)?|Apache-2\.0|MPL-2\.0|EUPL-1\.[12]|BSD-[234]-Clause|"
                 r"MIT|ISC|CC0-1\.0|CC-BY(?:-NC)?(?:-SA|-ND)?-\d\.\d|ODbL-1\.0|Unlicense|PSF-2\.0)(?![\w.-])")
_GNU_FAMILY = {"": "GPL", "AFFERO ": "AGPL", "LESSER ": "LGPL", "LIBRARY ": "LGPL"}


def _gnu_id(kind: str, version: str, suffix: str = "") -> str:
    return f"{_GNU_FAMILY[kind or '']}-{version if '.' in version else version + '.0'}{suffix}"


def detect_licence(text: str) -> str | None:
    """The SPDX-style identifier of a licence text (``"GPL-3.0"``, ``"BSD-3-Clause"``, ``"MIT"``…), or None.

    Recognises an ``SPDX-License-Identifier:`` line, the GNU licences by their title block ("GNU GENERAL PUBLIC
    LICENSE / Version 3, 29 June 2007") or their "either version N … or any later version" notice, Apache, MPL, EUPL,
    PSF, BSD 2/3/4-clause, MIT, ISC, the Unlicense, CC0, the Creative Commons BY family and ODbL. A file that bundles
    several licences (numpy's, scipy's) is identified by the one that comes first. A plain GNU licence text cannot say
    "only" or "or later", so it comes back as e.g. ``GPL-3.0``.
    """
    import re

    up = " ".join(text.split()).upper()
    found: list[tuple[int, str]] = []

    def first(pattern: str, make: Callable[[re.Match[str]], str]) -> None:
        m = re.search(pattern, up)
        if m:
            found.append((m.start(), make(m)))

    m = re.search(r"SPDX-LICENSE-IDENTIFIER:\s*([A-Z0-9.+-]+)", up)
    if m:
        raw = re.search(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+-]+)", text, re.IGNORECASE)
        found.append((m.start(), raw.group(1) if raw else m.group(1)))
    first(r"GNU (AFFERO |LESSER |LIBRARY )?GENERAL PUBLIC LICENSE,? VERSION (\d(?:\.\d)?), (?:\d{1,2} )?[A-Z]+ \d{4}",
          lambda m: _gnu_id(m.group(1), m.group(2)))
    first(r"GNU (AFFERO |LESSER |LIBRARY )?GENERAL PUBLIC LICENSE AS PUBLISHED BY THE FREE SOFTWARE FOUNDATION, "
          r"EITHER VERSION (\d(?:\.\d)?) OF THE LICENSE, OR \(AT YOUR OPTION\) ANY LATER VERSION",
          lambda m: _gnu_id(m.group(1), m.group(2), "-or-later"))
    first(r"APACHE LICENSE,? VERSION (\d\.\d)", lambda m: f"Apache-{m.group(1)}")
    first(r"MOZILLA PUBLIC LICENSE,? VERSION (\d\.\d)", lambda m: f"MPL-{m.group(1)}")
    first(r"EUROPEAN UNION PUBLIC LICEN[CS]E,? V(?:ERSION|\.) ?(\d\.\d)", lambda m: f"EUPL-{m.group(1)}")
    first(r"PYTHON SOFTWARE FOUNDATION LICENSE,? VERSION 2", lambda m: "PSF-2.0")
    first(r"CC0 1\.0 UNIVERSAL", lambda m: "CC0-1.0")
    parts = {"-NONCOMMERCIAL": "-NC", "-SHAREALIKE": "-SA", "-NODERIVATIVES": "-ND", "-NODERIVS": "-ND"}
    if "CREATIVE COMMONS" in up:
        first(r"ATTRIBUTION((?:-NONCOMMERCIAL)?(?:-SHAREALIKE|-NODERIVATIVES|-NODERIVS)?) (\d\.\d)",
              lambda m: f"CC-BY{''.join(parts[p] for p in re.findall(r'-[A-Z]+', m.group(1)))}-{m.group(2)}")
    first(r"OPEN DATABASE LICEN[CS]E", lambda m: "ODbL-1.0")

    def bsd(m: re.Match[str]) -> str:
        window = up[m.start():m.start() + 2000]
        if "ALL ADVERTISING MATERIALS MENTIONING" in window:
            return "BSD-4-Clause"
        if re.search(r"NEITHER THE NAMES? OF|NAMES? OF (ITS|THE|ANY) CONTRIBUTORS MAY NOT", window):
            return "BSD-3-Clause"
        return "BSD-2-Clause"

    first(r"REDISTRIBUTION AND USE IN SOURCE AND BINARY FORMS", bsd)
    first(r"PERMISSION IS HEREBY GRANTED, FREE OF CHARGE, TO ANY PERSON OBTAINING A COPY", lambda m: "MIT")
    first(r"PERMISSION TO USE, COPY, MODIFY, AND(?:/OR)? DISTRIBUTE THIS SOFTWARE FOR ANY PURPOSE", lambda m: "ISC")
    first(r"FREE AND UNENCUMBERED SOFTWARE RELEASED INTO THE PUBLIC DOMAIN", lambda m: "Unlicense")
    return min(found)[1] if found else None


def licence_terms(spdx: str | None) -> dict[str, Any]:
    """What the card states about a data licence: ``{"spdx", "copyleft", "note"}`` (a note, not legal advice)."""
    import re

    copyleft = bool(spdx) and re.match(_COPYLEFT, spdx, re.IGNORECASE) is not None
    note = None
    if copyleft:
        note = (f"The training data are licensed under {spdx}, a copyleft (share-alike) licence. These weights were "
                "trained on those data; whether the licence's terms extend to the weights or to their redistribution "
                "is not settled here: check before sharing them. This is a note, not legal advice.")
    elif spdx and "-NC" in spdx.upper():
        note = (f"The training data are licensed under {spdx}, which restricts commercial use; check whether that "
                "affects these weights before using them commercially. This is a note, not legal advice.")
    return {"spdx": spdx, "copyleft": copyleft, "note": note}


def _licence(manifest: Path) -> tuple[str, str | None]:
    """The data licence for the card: (text, SPDX id or None), from a LICENSE file beside the manifest or above."""
    base = manifest if manifest.is_dir() else manifest.parent
    for d in (base, base.parent):
        for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "COPYING"):
            f = d / name
            if f.is_file():
                text = f.read_text(errors="replace")
                spdx = detect_licence(text)
                if spdx is None:
                    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
                    return f"unrecognised licence text starting {first[:60]!r} (from {f}; pass --data-licence)", None
                return f"{spdx} (from {f})", spdx
    return "unknown: no LICENSE file beside the manifest (pass --data-licence)", None


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


def _default_channels(c: int) -> list[str]:
    return ["red", "green", "blue"] if c == 3 else [f"ch{i}" for i in range(c)]


def _embedding_model(config: TrainConfig, classical: bool, log: Callable[[str], None]) -> Any:
    """Load the neural model whose penultimate features a kNN/SVM is fitted on (``--embed-model``)."""
    from phenotyping.checkpoint import load_model_dir

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
    from phenotyping.data import channel_names_from_images

    mc = emb.model.config
    if n_chans != mc["in_chans"] or dims != mc.get("dims", 2):
        kind = {2: "2D", 3: "z-stacks"}
        raise ValueError(f"the images have {n_chans} channel(s) ({kind[dims]}) but the embedding model {emb.id} "
                         f"takes {mc['in_chans']} ({kind[mc.get('dims', 2)]})")
    names = list(emb.preprocess.channels)
    given = list(config.channels) if config.channels else channel_names_from_images(paths)
    if given is not None and [g.lower() for g in given] != [n.lower() for n in names]:
        generic = str(emb.card.get("input", {}).get("channel_names_from", "")).startswith("generic") or \
            names == _default_channels(len(names))
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
    from phenotyping.data import channel_names_from_images

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
    names = _default_channels(n_chans)
    log(f"note: the images carry no channel names and --channels was not given: channels {', '.join(names)} are "
        "treated as symmetric under flips and 90° rotations. If any is direction-dependent (DPC), name the channels "
        "with --channels (e.g. dpc_left,dpc_right or DPC) to get direction-aware augmentation")
    return names, "generic (no names in the images, no --channels): treated as symmetric"


def _score(metrics: dict[str, Any]) -> float:
    """Early-stopping score: validation macro-F1 plus mean Pearson r over targets (undefined r counts as 0)."""
    rs = [v["pearson"] or 0.0 for v in metrics.get("targets", {}).values()]
    return metrics["macro_f1"] + (float(np.mean(rs)) if rs else 0.0)


def train(manifest: str | Path, label_column: str, out: str | Path, *, target_columns: Sequence[str] = (),
          group_column: str | None = None, config: TrainConfig = TrainConfig(),
          log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Train ``config.arch`` on the cells of ``manifest`` and write ``out`` (checkpoint + model_card.json + split.csv).

    Returns the model card. Raises ValueError/KeyError/PhenotypingError for unusable input (missing columns,
    confounded groups, too few cells).
    """
    import torch

    from phenotyping.calibration import fit_temperature, softmax, unidentified_threshold
    from phenotyping.checkpoint import embedding_source, save_model_dir
    from phenotyping.data import (CellDataset, Preprocess, TargetScaler, channel_specs, class_weights, column,
                                  describe_augmentation,
                                  load_images, load_rows, parse_targets, split_indices, stratified_fraction)
    from phenotyping.evaluate import classification_metrics, predict_arrays, regression_metrics
    from phenotyping.losses import make_loss
    from phenotyping.models import create_model
    from phenotyping.models._registry import model_family
    from phenotyping.models.classical import EmbeddedClassicalModel

    t_start = time.perf_counter()
    manifest, out = Path(manifest), Path(out)
    rng_seed = config.seed
    torch.manual_seed(rng_seed)
    np.random.seed(rng_seed)

    # ---- rows, labels, targets
    rows = load_rows(manifest, label_column=label_column)
    labels = column(rows, label_column)
    if config.classes is not None:
        keep = [i for i, lab in enumerate(labels) if lab in config.classes]
        dropped = len(rows) - len(keep)
        absent = [c for c in config.classes if c not in set(labels)]
        if absent:
            raise ValueError(f"--classes {absent} do not occur in column {label_column!r}; "
                             f"labels present: {sorted(set(labels))}")
        if dropped:
            log(f"dropped {dropped} cells whose {label_column} is not one of {list(config.classes)}")
        rows, labels = [rows[i] for i in keep], [labels[i] for i in keep]
        classes = list(config.classes)
    else:
        classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"column {label_column!r} has {len(classes)} class(es); need at least 2")
    y_all = np.array([classes.index(lab) for lab in labels], np.int64)
    targets_raw = parse_targets(rows, target_columns) if target_columns else np.zeros((len(rows), 0))
    groups = column(rows, group_column) if group_column else None
    ids = column(rows, "cell_id") if rows and "cell_id" in rows[0] else [str(r["path"]) for r in rows]
    _check_unique_ids(ids, rows, manifest)

    # ---- data licence (stated in the card; a copyleft licence is noted there and here)
    if config.data_licence:
        import re

        given = re.search(_SPDX_IN_TEXT, config.data_licence, re.IGNORECASE)
        licence_text = config.data_licence
        licence_spdx = given.group(1) if given else detect_licence(config.data_licence)
    else:
        licence_text, licence_spdx = _licence(manifest)
    licence = licence_terms(licence_spdx)
    if licence["note"]:
        log(f"note: {licence['note']}")

    # ---- split
    split = split_indices(labels, groups, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                          seed=rng_seed)
    train_idx = split["train"]
    if config.fraction < 1:
        train_idx = train_idx[stratified_fraction(y_all[train_idx], config.fraction, rng_seed)]
    log(f"split: train {len(train_idx)} (of {len(split['train'])}), val {len(split['val'])}, "
        f"test {len(split['test'])} cells" + (f"; grouped by {group_column}" if group_column else ""))

    # ---- images
    classical = model_family(config.arch) == "classical"
    emb = _embedding_model(config, classical, log) if config.embed_model else None
    used = np.concatenate([train_idx, split["val"], split["test"]])
    from phenotyping.data import read_cell
    if emb is not None:
        img_size = emb.preprocess.img_size
        if config.img_size and config.img_size != img_size:
            raise ValueError(f"--img-size {config.img_size} differs from the embedding model's input size {img_size}; "
                             "drop --img-size (the embedding model's preprocessing is used)")
    else:
        first = read_cell(rows[int(used[0])]["path"])
        img_size = config.img_size or min(int(max(first.shape[-2:])), config.max_img_size)
    t0 = time.perf_counter()
    x = {k: load_images([rows[i]["path"] for i in idx], img_size) if len(idx) else None
         for k, idx in (("train", train_idx), ("val", split["val"]), ("test", split["test"]))}
    log(f"read {len(used)} images at {img_size}×{img_size} in {time.perf_counter() - t0:.1f}s")
    n_chans = x["train"].shape[1]
    dims = 3 if x["train"].ndim == 5 else 2
    paths_used = [rows[int(i)]["path"] for i in used]
    if emb is not None:
        names, names_from = _embedding_channels(emb, config, paths_used, n_chans, dims, log)
        pre = emb.preprocess
    else:
        names, names_from = _channel_names(config, paths_used, n_chans, log)
        specs = channel_specs(names)
        if config.augment and not classical:
            log(f"augmentation: {describe_augmentation(specs)}")
        pre = Preprocess.fit(x["train"], names, specs, mode=config.normalisation)
    scaler = None
    if target_columns:
        log_flags = [t in config.log_targets for t in target_columns]
        scaler = TargetScaler.fit(targets_raw[train_idx], target_columns, log_flags)
    z = scaler.transform(targets_raw) if scaler else np.zeros((len(rows), 0), np.float32)
    y = {"train": y_all[train_idx], "val": y_all[split["val"]], "test": y_all[split["test"]]}
    zt = {"train": z[train_idx], "val": z[split["val"]], "test": z[split["test"]]}
    xn = {k: pre.normalise(v, batched=True) if v is not None else None for k, v in x.items()}

    # ---- model
    cfg = dict(in_chans=n_chans, num_classes=len(classes), num_targets=len(target_columns), img_size=img_size,
               **config.model_overrides)
    if dims == 3 and "3d" not in config.arch and emb is None:
        raise ValueError(f"the images are z-stacks (C, Z, H, W) but --arch {config.arch} is 2D; use a 3D variant "
                         "such as hybrid3d or cnn3d")
    model = create_model(config.arch, **cfg)
    if emb is not None:
        model = EmbeddedClassicalModel(model, emb.model, embedding_source(emb.path, out, emb))
    history: list[dict[str, Any]] = []
    best_epoch = 0

    def val_metrics(m: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        m.eval()
        o = predict_arrays(m, xn["val"])
        met = classification_metrics(y["val"], o["logits"].argmax(1), classes)
        met["targets"] = regression_metrics(targets_raw[split["val"]], scaler.inverse(o["regression"]),
                                            target_columns) if scaler else {}
        return met, o

    if getattr(model, "is_neural", True):
        n_params = sum(p.numel() for p in model.parameters())
        weights = torch.from_numpy(class_weights(y["train"], len(classes)))
        loss_fn = make_loss(config.loss, len(target_columns), weights)
        params = [{"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": config.weight_decay},
                  {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
                  {"params": list(loss_fn.parameters()), "weight_decay": 0.0}]
        opt = torch.optim.AdamW(params, lr=config.lr)
        ds = CellDataset(x["train"], y["train"], zt["train"], pre,
                         augment_seed=rng_seed if config.augment else None)
        gen = torch.Generator().manual_seed(rng_seed)
        loader = torch.utils.data.DataLoader(ds, batch_size=config.batch_size, shuffle=True, generator=gen,
                                             drop_last=len(ds) > config.batch_size)
        steps = max(1, config.epochs * len(loader))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / max(1, len(loader))) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        best_score, best_state, waited = -math.inf, None, 0
        loss_weights: dict[str, Any] | None = None
        for epoch in range(1, config.epochs + 1):
            t_ep = time.perf_counter()
            ds.set_epoch(epoch)
            model.train()
            tot, nb = 0.0, 0
            for xb, yb, zb in loader:
                o = model(xb)
                loss, _ = loss_fn(o.logits, o.regression, yb, zb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                tot, nb = tot + float(loss.detach()), nb + 1
            met, _ = val_metrics(model)
            score = _score(met)
            rs = {k: v["pearson"] for k, v in met["targets"].items()}
            history.append({"epoch": epoch, "train_loss": tot / max(nb, 1), "val_accuracy": met["accuracy"],
                            "val_macro_f1": met["macro_f1"], "val_pearson": rs})
            improved = score > best_score + 1e-4
            if improved:
                best_score, best_state, best_epoch, waited = score, copy.deepcopy(model.state_dict()), epoch, 0
                loss_weights = loss_fn.describe(list(target_columns))
            else:
                waited += 1
            r_txt = " ".join(f"r[{k}] {v:.3f}" for k, v in rs.items() if v is not None)
            log(f"epoch {epoch}/{config.epochs} loss {tot / max(nb, 1):.4f} val acc {met['accuracy']:.3f} "
                f"macro-F1 {met['macro_f1']:.3f} {r_txt} ({time.perf_counter() - t_ep:.1f}s)"
                + (" *" if improved else ""))
            if waited >= config.patience:
                log(f"early stop: no validation improvement for {config.patience} epochs; best epoch {best_epoch}")
                break
        assert best_state is not None
        model.load_state_dict(best_state)
    else:
        n_params, loss_weights = 0, None
        t_fit = time.perf_counter()
        model.fit(xn["train"], y["train"], zt["train"] if scaler else None)
        log(f"fitted {config.arch} on {len(y['train'])} cells in {time.perf_counter() - t_fit:.1f}s")
    model.eval()

    # ---- validation metrics, calibration, test metrics
    met, o = val_metrics(model)
    temperature = fit_temperature(o["logits"], y["val"])
    p_thr, thr_info = unidentified_threshold(softmax(o["logits"], temperature), y["val"])
    test_met = None
    if xn["test"] is not None:
        ot = predict_arrays(model, xn["test"])
        test_met = classification_metrics(y["test"], ot["logits"].argmax(1), classes)
        test_met["targets"] = regression_metrics(targets_raw[split["test"]], scaler.inverse(ot["regression"]),
                                                 target_columns) if scaler else {}
    wall = time.perf_counter() - t_start

    # ---- card
    digest = hashlib.sha256(json.dumps([config.arch, cfg, classes, str(manifest.name), rng_seed, len(train_idx),
                                        best_epoch] + ([emb.id] if emb is not None else []), sort_keys=True,
                                       default=str).encode()).hexdigest()[:10]
    train_counts = np.bincount(y["train"], minlength=len(classes))
    card: dict[str, Any] = {
        "id": f"{out.name}-{digest}",
        "name": out.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
        "architecture": {"name": config.arch, "config": dict(model.config), "parameters": int(n_params)},
        "embedding_model": dict(model.source) if emb is not None else None,
        "input": {"channels": names, "channel_names_from": names_from, "channel_specs": pre.channel_specs,
                  "img_size": img_size, "dims": dims,
                  "resize": "longer side scaled to img_size by area averaging (never enlarged), then centre-padded "
                            "with each channel's border median",
                  "normalisation": {"mode": pre.mode, "mean": pre.mean, "std": pre.std}},
        "classes": classes,
        "targets": [{"name": n, "log": lg, "mean": m, "std": s} for n, lg, m, s in
                    zip(scaler.names, scaler.log, scaler.mean, scaler.std)] if scaler else [],
        "training": {"manifest": str(manifest), "data_licence": licence_text,
                     "data_licence_terms": licence,
                     "n_cells": len(rows), "label_column": label_column, "target_columns": list(target_columns),
                     "group_column": group_column, "config": {**asdict(config), "img_size": img_size},
                     "class_weighting": CLASS_WEIGHTING if getattr(model, "is_neural", True) else
                     ("SVM class_weight=balanced" if model.config.get("kind") == "svm" else "none (kNN)"),
                     "class_proportions": {c: float(n / max(train_counts.sum(), 1))
                                           for c, n in zip(classes, train_counts)},
                     "loss_weights": loss_weights,
                     "best_epoch": best_epoch, "epochs_run": len(history), "history": history,
                     "wall_time_s": round(wall, 1)},
        "split": {"method": ("StratifiedGroupKFold hold-outs by " + group_column) if group_column else
                  "stratified random hold-outs (StratifiedShuffleSplit)",
                  "val_fraction": config.val_fraction, "test_fraction": config.test_fraction, "seed": rng_seed,
                  "n": {"train": int(len(train_idx)), "val": int(len(split["val"])), "test": int(len(split["test"]))},
                  "file": "split.csv"},
        "validation": met,
        "test": test_met,
        "calibration": {"temperature": temperature, "unidentified_threshold": p_thr, **thr_info,
                        "method": "temperature scaling on the validation split (Guo et al. 2017)"},
        "software": _versions(),
    }
    # ---- post-fit sections: the prior the probabilities assume, confident confusion, image QC (phenotyping.postfit)
    from phenotyping.postfit import apply_sections, card_sections

    qc_pick = np.random.default_rng(rng_seed).permutation(train_idx)[:2000]
    apply_sections(card, card_sections(
        classes=classes, train_counts=train_counts.tolist(), class_weighting=card["training"]["class_weighting"],
        val_probabilities=softmax(o["logits"], temperature), val_y=y["val"], threshold=p_thr,
        train_images=[read_cell(rows[int(i)]["path"]) for i in sorted(qc_pick)]))
    log(f"image QC from {len(qc_pick)} training images: {card['qc_calibration']['training_pass_rate']:.1%} pass"
        + (f"; disabled: {card['qc_calibration']['disabled']}" if card["qc_calibration"]["disabled"] else ""))
    save_model_dir(out, model, card, preprocess=pre, targets=scaler)
    with (out / "split.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "split"])
        which = {int(i): "train" for i in train_idx}
        which.update({int(i): "val" for i in split["val"]})
        which.update({int(i): "test" for i in split["test"]})
        for i in sorted(which):
            w.writerow([ids[i], which[i]])
    log(f"wrote {out} in {wall:.1f}s: val accuracy {met['accuracy']:.3f}, macro-F1 {met['macro_f1']:.3f}, "
        f"T = {temperature:.2f}, review threshold {p_thr:.2f}")
    return card
