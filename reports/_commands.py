"""The report lifecycle on the command line: ``draft``, ``edit``, ``amend`` and ``sign --sample`` over the store.

Each calls the function of :mod:`reports.workflow` the Report screen calls, as an account that authenticates
(``--user`` and its password: :func:`phenotyping.cli._common.authenticated`), so the screen's gates hold here too:
roles, the unidentified queue, the interpretation check, signed versions locked.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from phenotyping.cli._common import (add_db_argument, add_user_arguments, authenticated, open_store, print_json,
                                     read_password, settings_for)


def _version_json(rv: Any) -> dict[str, Any]:
    return {"sample": rv.sample_id, "version": rv.version, "status": rv.status, "source": rv.interpretation_source,
            "amends_version": rv.amends_version, "amendment_reason": rv.amendment_reason,
            "interpretation": rv.interpretation}


def _draft(args: argparse.Namespace) -> int:
    from reports.workflow import draft_report

    with open_store(args.db) as store:
        user = authenticated(store, args, "report.draft")
        rv, record = draft_report(store, args.sample, actor=user.username, settings=settings_for(args.db))
    print_json({**_version_json(rv), "outcome": record.outcome, "model": record.model})
    return 0


def _edit(args: argparse.Namespace) -> int:
    from reports.workflow import save_edit

    if not args.text_file.is_file():
        raise FileNotFoundError(f"text file not found: {args.text_file}")
    text = args.text_file.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{args.text_file} is empty; write the interpretation into it")
    with open_store(args.db) as store:
        user = authenticated(store, args, "report.draft")
        before = store.list_report_versions(args.sample)
        rv = save_edit(store, args.sample, text, actor=user.username)
    print_json({**_version_json(rv), "changed": rv.version != before[-1].version})
    return 0


def _amend(args: argparse.Namespace) -> int:
    from reports.workflow import amend_report

    with open_store(args.db) as store:
        user = authenticated(store, args, "report.amend")
        rv = amend_report(store, args.sample, reason=args.reason, actor=user.username)
    print_json(_version_json(rv))
    return 0


def sign_sample(args: argparse.Namespace) -> int:
    """``sign --sample``: render the latest version as final (or amended), sign it and record it in the store, as
    the Report screen does; ``--out`` also copies the signed PDF there. The key is ``--key``, else the account's
    installed key."""
    from phenotyping.auth import signer_key_path
    from reports.workflow import sign_report

    if args.pdf is not None:
        raise ValueError("give either a PDF file to sign or --sample to sign a sample's report, not both")
    if args.location is not None:
        raise ValueError("--location applies to signing a PDF file; a sample's report is signed as the app does")
    if args.out is not None and args.out.exists():
        raise FileExistsError(f"{args.out} exists; choose another name")
    settings = settings_for(args.db)
    with open_store(args.db) as store:
        user = authenticated(store, args, "report.sign")
        key = args.key if args.key is not None else signer_key_path(settings, user.username)
        if not Path(key).is_file():
            raise FileNotFoundError(f"signing key {key} not found; give --key FILE.p12 (or install your key on the "
                                    "Report screen)")
        password = read_password(args.password_file, "LEUKO_SIGNER_PASSWORD", prompt="Signing key password: ")
        out = sign_report(store, args.sample, signer=user.username, key_path=Path(key), password=password.encode(),
                          settings=settings, reason=args.reason, domain_acknowledgement=args.acknowledge_domain)
    if args.out is not None:
        shutil.copyfile(out["pdf"], args.out)
        out["copy"] = str(args.out)
    print_json({"sample": args.sample, **out})
    return 0


def add_sample_signing(p: argparse.ArgumentParser) -> None:
    """The ``--sample`` form's arguments of ``sign`` (the PDF-file form keeps its own)."""
    p.add_argument("--acknowledge-domain", default=None, metavar="REASON",
                   help="with --sample: why you sign although the analysis was out of distribution (required then; "
                        "audited and printed in the report)")
    p.add_argument("--sample", default=None,
                   help="sign this sample's latest report version and record it in the store, as the app does "
                        "(instead of a PDF file; --key defaults to your installed key, --out is then a copy)")
    add_user_arguments(p, "signs (with --sample: a signer or admin)")
    add_db_argument(p)


def add_workflow_commands(sub: Any) -> None:
    """``draft``, ``edit`` and ``amend``."""
    d = sub.add_parser("draft", help="draft a sample's interpretation (a new report version)",
                       description="Draft the interpretation from the sample's computed results (the LLM of "
                                   "LEUKO_LLM_MODEL, else the template) and save it as a new version; the audit "
                                   "keeps the model, prompt hash and raw outputs. Refused once the latest version "
                                   "is signed (amend it instead).")
    d.add_argument("--sample", required=True)
    add_user_arguments(d, "drafts the report")
    add_db_argument(d)
    d.set_defaults(func=_draft)
    e = sub.add_parser("edit", help="save an edited interpretation as a new version",
                       description="Save the text of --text-file as the interpretation of a new version (no new "
                                   "version when it is unchanged). Its numbers are checked against the results "
                                   "when the report is signed.")
    e.add_argument("--sample", required=True)
    e.add_argument("--text-file", type=Path, required=True, help="UTF-8 text file holding the interpretation")
    add_user_arguments(e, "edits the report")
    add_db_argument(e)
    e.set_defaults(func=_edit)
    a = sub.add_parser("amend", help="start an amendment of a signed report (unlocks the sample)",
                       description="Open a new version that amends the latest signed one, with the reason shown on "
                                   "the report; edit it, then sign it again. A signer or admin amends.")
    a.add_argument("--sample", required=True)
    a.add_argument("--reason", required=True, help="what was wrong in the signed report")
    add_user_arguments(a, "amends the report (a signer or admin)")
    add_db_argument(a)
    a.set_defaults(func=_amend)
