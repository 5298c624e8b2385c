"""``python -m phenotyping ingest SOURCE --sample ID --specimen blood|balf``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phenotyping.cli._common import add_db_argument, open_store, print_json
from phenotyping.cli.samples import add_sample_detail_arguments, sample_details


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="ingest an image set (folder, .zip, manifest.csv or image) into a sample",
        description="Ingest a single-cell image set into a sample (created if new). Prints JSON "
                    '{"sample_id", "ingested", "duplicates", "rejected": [{"file", "reason"}]}; duplicates are '
                    "also listed in rejected; a \"notes\" list is added when decoding changed files (a constant "
                    "alpha channel dropped). Exit 0 if at least one cell was ingested, else 2 (a new sample is "
                    "then not created).",
    )
    p.add_argument("source", type=Path, help="folder, .zip, manifest.csv or single image")
    p.add_argument("--sample", required=True, help="sample id (letters, digits, '.', '_', '-')")
    p.add_argument("--specimen", required=True, choices=["blood", "balf"])
    p.add_argument("--pseudonym", default="", help="patient pseudonym (never a name)")
    add_sample_detail_arguments(p)
    p.add_argument("--label-column", default=None,
                   help="manifest column holding the reference class (default: label, cell_type, class or phase)")
    p.add_argument("--bsccm-channels", default=None,
                   help="for a BSCCM folder: comma-separated LED-array channels to keep "
                        "(default DPC_Left,DPC_Right,DPC_Top,DPC_Bottom)")
    p.add_argument("--bsccm-contrast", default="led_array", choices=["led_array", "dpc"],
                   help="for a BSCCM folder: which images to read")
    p.add_argument("--user", default="cli", help="who is ingesting (recorded in the audit trail)")
    _add_derive_arguments(p)
    add_db_argument(p)
    p.set_defaults(func=run)


# OpticalSetup fields (units in the names; flags spell them with dashes) -> whether --derive qdpc-phase needs it.
_OPTICS = {"wavelength_um": True, "na_objective": True, "na_illumination": True, "pixel_size_um": True,
           "magnification": True, "na_illumination_inner": False, "immersion_index": False}


def _add_derive_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "derived channels", "--derive qdpc-phase computes a quantitative phase map (radians; Tian & Waller 2015) "
        "from each cell's DPC_Left, DPC_Right, DPC_Top and DPC_Bottom images (found by channel name: BSCCM, TIFF "
        "metadata or a channel_names manifest column) and stores it as channel qdpc_phase. BSCCM's metadata "
        "carries no optics, so give them here or in --optics FILE.json (keys as the flags, with underscores).")
    g.add_argument("--derive", choices=["qdpc-phase"], default=None, help="channel to derive at ingest")
    g.add_argument("--raw-channels", choices=["keep", "replace"], default=None,
                   help="required with --derive: keep the four half-pupil images beside the phase (train on "
                        "both), or replace them by it (other channels are always kept)")
    g.add_argument("--qdpc-absorption", action="store_true", help="also derive qdpc_absorption")
    g.add_argument("--qdpc-regularisation", type=float, default=None,
                   help="Tikhonov weight of the phase (default 1e-3; larger: smoother, less noise)")
    g.add_argument("--optics", type=Path, default=None, help="JSON file with the optical parameters below")
    helps = {"wavelength_um": "illumination wavelength, µm (e.g. 0.53)", "na_objective": "objective NA",
             "na_illumination": "outer NA of each half-pupil pattern (at most the objective NA)",
             "pixel_size_um": "camera pixel pitch, µm (before magnification)", "magnification": "total magnification",
             "na_illumination_inner": "inner NA of an annular pattern (default 0: half-disc)",
             "immersion_index": "refractive index of the objective's immersion (default 1.0, air)"}
    for name in _OPTICS:
        g.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=helps[name])


def derivation_from_args(args: argparse.Namespace):
    """The :class:`~phenotyping.ingest.QdpcDerivation` the arguments ask for, or None; ValueError names what is
    missing or inconsistent."""
    import json

    from phenotyping.ingest import OpticalSetup, QdpcDerivation

    given = {k: getattr(args, k) for k in _OPTICS if getattr(args, k) is not None}
    if args.derive is None:
        extra = [f"--{k.replace('_', '-')}" for k in given] + [
            f for f, on in (("--raw-channels", args.raw_channels), ("--optics", args.optics),
                            ("--qdpc-absorption", args.qdpc_absorption),
                            ("--qdpc-regularisation", args.qdpc_regularisation is not None)) if on]
        if extra:
            raise ValueError(f"{', '.join(extra)} only apply with --derive qdpc-phase")
        return None
    if args.raw_channels is None:
        raise ValueError("--derive qdpc-phase needs --raw-channels keep (store the half-pupil images and the "
                         "phase) or --raw-channels replace (store the phase instead of them)")
    optics: dict = {}
    if args.optics is not None:
        try:
            optics = json.loads(args.optics.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--optics {args.optics}: cannot read it as JSON ({e})") from e
        if not isinstance(optics, dict):
            raise ValueError(f"--optics {args.optics}: expected a JSON object with keys {sorted(_OPTICS)}")
        unknown = sorted(set(optics) - set(_OPTICS))
        if unknown:
            raise ValueError(f"--optics {args.optics}: unknown key(s) {unknown}; expected {sorted(_OPTICS)}")
    optics = {**optics, **given}
    missing = [f"--{k.replace('_', '-')}" for k, needed in _OPTICS.items() if needed and k not in optics]
    if missing:
        raise ValueError(f"--derive qdpc-phase needs the optics: {', '.join(missing)} missing (on the command "
                         "line or in --optics FILE.json)")
    setup = OpticalSetup(**optics)
    reg = {} if args.qdpc_regularisation is None else {"reg_phase": args.qdpc_regularisation}
    return QdpcDerivation(setup=setup, raw=args.raw_channels, absorption=args.qdpc_absorption, **reg)


def run(args: argparse.Namespace) -> int:
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.settings import get_settings

    settings = get_settings()
    details = sample_details(args)  # before opening the store: a naive time fails without touching anything
    derive = derivation_from_args(args)
    with open_store(args.db) as store:
        new = None
        if store.sample_exists(args.sample):
            existing = store.get_sample(args.sample)
            if existing.specimen.value != args.specimen:
                raise ValueError(f"sample {args.sample} exists with specimen {existing.specimen.value}, "
                                 f"not {args.specimen}")
            differ = sorted(k for k, v in details.items() if getattr(existing, k) != v)
            if differ:
                raise ValueError(f"sample {args.sample} exists with other {', '.join(differ)}; ingest sets them only "
                                 f"when it creates a sample: change them with `python -m phenotyping samples update "
                                 f"--sample {args.sample} …`")
        else:  # created with the first batch of cells: a set of which nothing is usable leaves no empty sample
            new = Sample(id=args.sample, specimen=Specimen(args.specimen), patient_pseudonym=args.pseudonym,
                         **details)

        def progress(done: int, total: int | None) -> None:
            print(f"\r{done} files read", end="", file=sys.stderr, flush=True)

        bsccm = {"contrast": args.bsccm_contrast}
        if args.bsccm_channels:
            bsccm["channels"] = [c.strip() for c in args.bsccm_channels.split(",") if c.strip()]
        result = ingest_set(store, args.source, args.sample, actor=args.user, label_column=args.label_column,
                            max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                            max_files=settings.max_files_per_set, progress=progress if sys.stderr.isatty() else None,
                            bsccm_options=bsccm, create=new,
                            derive=derive)
    out = result.model_dump(mode="json")
    if not out["notes"]:
        del out["notes"]  # the four keys of the contract; "notes" only when decoding changed something
    print_json(out)
    return 0
