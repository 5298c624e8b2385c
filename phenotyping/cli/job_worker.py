"""``python -m phenotyping job-worker``: the app's analysis worker process (hidden: started by
:class:`phenotyping.jobs.worker.ProcessWorker`, speaking JSON lines on stdin/stdout; see
:mod:`phenotyping.jobs._worker_main`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("job-worker", description="The app's analysis worker process: reads JSON requests on stdin "
                                                 "and answers in JSON lines on stdout. Started by the app, not by "
                                                 "people.")  # no help=: not listed among the commands
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from phenotyping.jobs._worker_main import main

    return main()
