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
    add_db_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.ingest import ingest_set
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.settings import get_settings

    settings = get_settings()
    details = sample_details(args)  # before opening the store: a naive time fails without touching anything
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
                            bsccm_options=bsccm, create=new)
    out = result.model_dump(mode="json")
    if not out["notes"]:
        del out["notes"]  # the four keys of the contract; "notes" only when decoding changed something
    print_json(out)
    return 0
