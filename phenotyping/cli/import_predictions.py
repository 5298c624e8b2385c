"""``python -m phenotyping import-predictions --sample ID RESULTS.parquet``: load a Ray run into the store."""

from __future__ import annotations

import argparse
from pathlib import Path

from phenotyping.cli._common import add_db_argument, add_user_arguments, authenticated, open_store, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-predictions", help="load a `predict --engine ray` result file into a sample",
        description="Load the per-cell results of `predict --engine ray` into a sample, as the local engine would "
                    "have written them: cells the sample lacks are first ingested from the run's source (same "
                    "channel rule and rejections), each row is matched to its cell by cell id and checked against "
                    "the stored file's SHA-256, then image-QC outcomes and predictions are committed per batch "
                    "(a rerun resumes). This process is the database's only writer; the Ray workers never open it. "
                    'Prints JSON {"sample_id", "model_id", "rows", "ingested", "predicted", "excluded", '
                    '"rejected", "already_predicted"}.',
    )
    p.add_argument("results", type=Path, help="the Parquet file `predict --engine ray --out` wrote")
    p.add_argument("--sample", required=True, help="id of an existing sample")
    p.add_argument("--no-ingest", action="store_true",
                   help="do not ingest missing cells; every result row must match a cell the sample holds")
    add_user_arguments(p, "imports the predictions")
    add_db_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.analysis.distributed import import_predictions

    if not args.results.is_file():
        raise FileNotFoundError(f"{args.results}: no such result file")
    with open_store(args.db) as store:
        actor = authenticated(store, args, "analyse").username
        print_json(import_predictions(store, args.sample, args.results, actor=actor, ingest=not args.no_ingest))
    return 0
