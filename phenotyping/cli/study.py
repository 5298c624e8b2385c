"""``python -m phenotyping study {run,list,show}``: method-comparison studies of the model against manual counts."""

from __future__ import annotations

import argparse
from typing import Any

from phenotyping.cli._common import add_db_argument, add_user_arguments, authenticated, open_store, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run, list or show method-comparison studies (model vs manual counts)",
                       description="A study compares the model's differentials with the manual counts over "
                                   "samples (Bland-Altman, Passing-Bablok, Deming, CCC per class; the model's "
                                   "pre-classification against the reviewed cells) and is saved in the database, "
                                   "as on the Agreement screen.")
    ss = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    r = ss.add_parser("run", help="compute and save a study; prints what was saved")
    r.add_argument("--name", required=True, help="study name (an existing one is refused unless --replace)")
    r.add_argument("--sample", nargs="+", default=None,
                   help="samples (default: every analysed sample with manual counts)")
    r.add_argument("--model", default=None,
                   help="model id (default: the analysis model the samples share)")
    r.add_argument("--measure", choices=["absolute", "percent"], default="absolute",
                   help="differences in percentage points (absolute) or in %% of the mean (percent)")
    r.add_argument("--manual-cells", type=int, nargs="+", default=None,
                   help="cells per manual count for the counting-error columns (default 200 400)")
    r.add_argument("--replace", action="store_true", help="replace a saved study of the same name")
    add_user_arguments(r, "runs the study")
    add_db_argument(r)
    r.set_defaults(func=_run)
    ls = ss.add_parser("list", help="saved studies, newest first (JSON)")
    add_db_argument(ls)
    ls.set_defaults(func=_list)
    sh = ss.add_parser("show", help="a saved study with its per-class results (JSON)")
    sh.add_argument("name")
    add_db_argument(sh)
    sh.set_defaults(func=_show)


def _samples_and_model(store: Any, samples: list[str] | None, model: str | None) -> tuple[list[str], str]:
    """The study's samples (default: the analysed ones with manual counts, as the Agreement screen offers) and its
    model (default: the one analysis model they share)."""
    if samples is None:
        samples = [s for s in store.samples_with_manual_counts() if store.analysis_model(s)]
        if not samples:
            raise ValueError("no analysed sample has manual counts; import them first (counts import)")
    for s in samples:
        store.get_sample(s)
    if model is None:
        models = sorted({m for m in (store.analysis_model(s) for s in samples) if m})
        if len(models) != 1:
            raise ValueError(f"the samples were analysed by {models or 'no model'}; name the model with --model")
        model = models[0]
    return list(samples), model


def _run(args: argparse.Namespace) -> int:
    from phenotyping.agreement.study import DEFAULT_MANUAL_CELLS, run_study

    with open_store(args.db) as store:
        user = authenticated(store, args, "counts")
        if not args.replace and any(s["name"] == args.name for s in store.list_studies()):
            raise ValueError(f"a study named {args.name!r} exists; choose another name or pass --replace")
        samples, model = _samples_and_model(store, args.sample, args.model)
        run_study(store, args.name, model_id=model, actor=user.username, sample_ids=samples, measure=args.measure,
                  manual_cells=args.manual_cells or DEFAULT_MANUAL_CELLS)
        print_json(store.get_study(args.name))
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_store(args.db, read_only=True) as store:
        print_json(store.list_studies())
    return 0


def _show(args: argparse.Namespace) -> int:
    with open_store(args.db, read_only=True) as store:
        print_json(store.get_study(args.name))
    return 0
