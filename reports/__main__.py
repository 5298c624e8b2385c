"""Reports command line: ``python -m reports COMMAND --help``.

Commands print a JSON result on stdout. Passwords never go on the command line: they are read from a file
(``--password-file``) or from the environment (``LEUKO_SIGNER_PASSWORD``, ``LEUKO_CA_PASSWORD``).
Errors a user can fix are printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from phenotyping.errors import PhenotypingError
from reports._commands import add_sample_signing, add_workflow_commands, sign_sample


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def _password(file: Path | None, env: str, what: str) -> bytes:
    if file is not None:
        lines = file.read_text().splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"password file {file} is empty; put the {what} password on its first line")
        return lines[0].encode()
    value = os.environ.get(env)
    if not value:
        raise ValueError(f"no {what} password: give --{'ca-' if what == 'CA' else ''}password-file FILE or set "
                         f"{env}")
    return value.encode()


# -- commands -----------------------------------------------------------------------------------------------------
def _render(args: argparse.Namespace) -> int:
    from phenotyping.cli._common import open_store
    from phenotyping.analysis.results import sample_results
    from phenotyping.settings import get_settings
    from reports.context import build_context
    from reports.pdf import render
    from reports.reference import load_reference_intervals
    from reports.workflow import cells_csv_from_results

    if args.out.exists():
        raise FileExistsError(f"{args.out} exists; reports are never overwritten, choose another name")
    intervals = None if args.reference_intervals is None else load_reference_intervals(args.reference_intervals)
    with open_store(args.db, read_only=True) as store:
        res = sample_results(store, args.sample)
        ctx = build_context(store, args.sample, version=args.version, settings=get_settings(), results=res,
                            reference_intervals=intervals)
        cells = cells_csv_from_results(res)
    pdf = render(ctx, cells_csv=cells)
    with open(args.out, "xb") as f:
        f.write(pdf)
    _print_json({"out": str(args.out), "sample": ctx.sample_id, "report_id": ctx.report_id,
                 "version": ctx.version, "status": ctx.status, "bytes": len(pdf),
                 "reference_intervals": ctx.reference_source, "study": ctx.study.name if ctx.study else None})
    return 0


def _sign(args: argparse.Namespace) -> int:
    from reports.signing import sign

    if args.sample is not None:
        return sign_sample(args)
    missing = [name for name, v in (("FILE.pdf (or --sample ID)", args.pdf), ("--key", args.key),
                                    ("--out", args.out)) if v is None]
    if missing:
        raise ValueError(f"sign needs {', '.join(missing)}")
    from phenotyping.settings import get_settings

    password = _password(args.password_file, "LEUKO_SIGNER_PASSWORD", "signer")
    _print_json(sign(args.pdf, args.key, args.out, password=password, reason=args.reason or "Report authorised",
                     location=args.location, lab_ca=get_settings().lab_ca))
    return 0


def _export(args: argparse.Namespace) -> int:
    from reports.workflow import export_cells_csv, export_fhir

    from phenotyping.cli._common import open_store

    if args.fhir is None and args.csv is None:
        raise ValueError("give --fhir FILE.json and/or --csv FILE.csv")
    for out in (args.fhir, args.csv):
        if out is not None and out.exists():
            raise FileExistsError(f"{out} exists; choose another name")
    written = {}
    with open_store(args.db, read_only=True) as store:
        if args.fhir is not None:
            bundle = export_fhir(store, args.sample, version=args.version)
            args.fhir.write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
            written["fhir"] = str(args.fhir)
        if args.csv is not None:
            args.csv.write_text(export_cells_csv(store, args.sample, version=args.version), encoding="utf-8")
            written["csv"] = str(args.csv)
    _print_json({"sample": args.sample, **written})
    return 0


def _verify(args: argparse.Namespace) -> int:
    from reports.signing import verify

    from phenotyping.settings import get_settings

    result = verify(args.pdf, trust=args.trust if args.trust is not None else get_settings().lab_ca)
    relaxed = args.allow_untrusted and result["intact"] and result["modifications_ok"]
    result["accepted"] = bool(result["valid"] or relaxed)
    if relaxed and not result["valid"]:
        result["note"] = "accepted with --allow-untrusted: intact and unmodified, but the signer is NOT trusted"
    _print_json(result)
    return 0 if result["accepted"] else 1


def _init_ca(args: argparse.Namespace) -> int:
    from reports.keys import init_ca

    password = _password(args.ca_password_file, "LEUKO_CA_PASSWORD", "CA")
    cert = init_ca(args.out, name=args.name, organisation=args.organisation, password=password, years=args.years,
                   key_type=args.key_type)
    _print_json({"ca_certificate": str(cert), "ca_key": str(args.out / "ca.key.pem"),
                 "note": "set LEUKO_LAB_CA to ca.pem (signer keys must be issued by it; verify trusts it) and "
                         "share it as the trust anchor (verify --trust); keep ca.key.pem offline"})
    return 0


def _issue(args: argparse.Namespace) -> int:
    from reports.keys import issue_signer

    ca_password = _password(args.ca_password_file, "LEUKO_CA_PASSWORD", "CA")
    password = _password(args.password_file, "LEUKO_SIGNER_PASSWORD", "signer")
    out = issue_signer(args.ca, args.out, name=args.name, role=args.role, email=args.email, ca_password=ca_password,
                       password=password, years=args.years, key_type=args.key_type)
    _print_json({"signer_key": str(out), "name": args.name, "role": args.role})
    return 0


def _bench(args: argparse.Namespace) -> int:
    import hashlib
    import tempfile

    from reports.keys import init_ca, issue_signer
    from reports.pdf import render
    from reports.signing import sign, verify

    out: dict[str, Any] = {"repeat": args.repeat, "first_run_includes_imports": True,
                           "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        init_ca(d / "ca", name="Benchmark CA", password=b"bench-ca-pw", key_type="ec")
        issue_signer(d / "ca", d / "s.p12", name="Bench Signer", role="signer", ca_password=b"bench-ca-pw",
                     password=b"bench-signer-pw", key_type="ec")
        if args.source == "demo":
            from reports.demo import demo_context

            runs = []
            for i in range(args.repeat):
                ctx = demo_context(status="final")
                t0, c0 = time.perf_counter(), time.process_time()
                (d / f"r{i}.pdf").write_bytes(render(ctx))
                t1 = time.perf_counter()
                sign(d / f"r{i}.pdf", d / "s.p12", d / f"s{i}.pdf", password=b"bench-signer-pw")
                t2 = time.perf_counter()
                runs.append({"render_s": round(t1 - t0, 3), "sign_s": round(t2 - t1, 3),
                             "render_sign_s": round(t2 - t0, 3),
                             "render_sign_cpu_s": round(time.process_time() - c0, 3)})
            out["runs"] = runs
        else:
            out.update(_bench_store(d, args))
        last = sorted(d.glob("s*.pdf"))[-1]
        out["signature_intact"] = verify(last)["intact"]
        out["pdf_bytes"] = last.stat().st_size
        out["pdf_sha256"] = hashlib.sha256(last.read_bytes()).hexdigest()[:16]
    _print_json(out)
    return 0


def _bench_store(d: Path, args: argparse.Namespace) -> dict[str, Any]:
    """build_context from a synthetic analysed store (study included), render, sign; bootstrap timed apart."""
    from phenotyping.analysis.results import sample_results
    from phenotyping.settings import Settings
    from phenotyping.store import Store
    from reports.context import build_context
    from reports.demo import demo_store
    from reports.pdf import render
    from reports.signing import sign
    from reports.workflow import cells_csv_from_results

    db = d / "bench.duckdb"
    settings = Settings(db_path=db, reference_intervals=args.reference_intervals)
    t0 = time.perf_counter()
    with Store(db, image_dir=settings.image_dir()) as store:
        sample = demo_store(store, d / "model", n_cells=args.cells)
        store.add_report_version(sample, interpretation="Benchmark report.", source="template", actor="bench")
        setup = time.perf_counter() - t0
        runs = []
        for i in range(args.repeat):
            t = time.perf_counter()
            res0 = sample_results(store, sample, n_bootstrap=0)
            t_nb = time.perf_counter() - t
            t = time.perf_counter()
            res = sample_results(store, sample)
            t_b = time.perf_counter() - t
            t = time.perf_counter()
            ctx = build_context(store, sample, settings=settings, results=res, status="final")
            t_ctx = time.perf_counter() - t
            t, c = time.perf_counter(), time.process_time()
            pdf = render(ctx, cells_csv=cells_csv_from_results(res))
            (d / f"r{i}.pdf").write_bytes(pdf)
            t_render = time.perf_counter() - t
            t = time.perf_counter()
            sign(d / f"r{i}.pdf", d / "s.p12", d / f"s{i}.pdf", password=b"bench-signer-pw")
            t_sign = time.perf_counter() - t
            c_render_sign = time.process_time() - c
            runs.append({"sample_results_no_bootstrap_s": round(t_nb, 3),
                         "sample_results_1000_bootstrap_s": round(t_b, 3),
                         "build_context_s": round(t_ctx, 3), "render_s": round(t_render, 3),
                         "sign_s": round(t_sign, 3), "render_sign_s": round(t_render + t_sign, 3),
                         "render_sign_cpu_s": round(c_render_sign, 3),
                         "total_s": round(t_b + t_ctx + t_render + t_sign, 3)})
            assert res0.differential is not None
    return {"source": "store", "cells": args.cells, "counted": ctx.qc.counted_cells,
            "study": ctx.study.name if ctx.study else None, "figures": len(ctx.bland_altman_figures),
            "store_setup_s": round(setup, 3), "runs": runs,
            "note": "build_context_s excludes sample_results (timed apart, with and without the 1,000-resample "
                    "bootstrap of the corrected %); it includes the study's recomputation and Bland-Altman SVGs"}


# -- parser -------------------------------------------------------------------------------------------------------
def _add_render(sub: Any) -> None:
    p = sub.add_parser("render", help="render a sample's report as PDF/A-3b",
                       description="Render the latest (or --version) unsigned report of a sample to a new "
                                   "PDF/A-3b file with its results JSON and per-cell CSV attached. A signed version "
                                   "is refused: what was signed is its signed PDF.")
    p.add_argument("--sample", required=True, help="sample id")
    p.add_argument("--version", type=int, default=None, help="report version (default: the latest)")
    p.add_argument("--db", type=Path, default=None, help="DuckDB file (default: LEUKO_DB_PATH or var/leuko.duckdb)")
    p.add_argument("--out", type=Path, required=True, help="PDF file to write (must not exist)")
    p.add_argument("--reference-intervals", type=Path, default=None,
                   help="reference-interval CSV/JSON (default: LEUKO_REFERENCE_INTERVALS; see reports/reference.py)")
    p.set_defaults(func=_render)


def _add_sign(sub: Any) -> None:
    p = sub.add_parser("sign", help="PAdES-sign a PDF into a new file, or sign a sample's report in the store",
                       description="Certify FILE.pdf (DocMDP: no later changes permitted) with the signer's PKCS#12 "
                                   "key and write SIGNED.pdf (the input is never changed); a PDF that states it is "
                                   "PRELIMINARY is refused, and with LEUKO_LAB_CA set the key must be issued by "
                                   "that CA and valid. With --sample ID instead of a file: render the sample's latest "
                                   "report version as final, sign it and record it in the store as the app does "
                                   "(an authenticated signer; refused while cells await review or the "
                                   "interpretation does not match the results). Key password: --password-file or "
                                   "LEUKO_SIGNER_PASSWORD.")
    p.add_argument("pdf", type=Path, nargs="?", default=None, help="PDF to sign (or --sample)")
    p.add_argument("--key", type=Path, default=None, help="signer's PKCS#12 (.p12/.pfx) with chain")
    p.add_argument("--out", type=Path, default=None, help="signed PDF to write (must not exist)")
    p.add_argument("--password-file", type=Path, default=None, help="file whose first line is the key password")
    p.add_argument("--reason", default=None,
                   help="signing reason shown in the stamp (default: 'Report authorised'; with --sample 'Final "
                        "report' or the amendment's reason)")
    p.add_argument("--location", default=None, help="signing location (optional)")
    add_sample_signing(p)
    p.set_defaults(func=_sign)


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="check a signed PDF",
                       description="Validate every signature with pyHanko and print JSON: valid, intact, "
                                   "modifications_ok (nothing added after signing beyond what its DocMDP "
                                   "permissions allow), trusted (chains to the trust anchor and valid at the "
                                   "signing time), certified, signer, signed_at, reasons (each failed rule). Exit "
                                   "status 0 only when the PDF is signed, intact, unmodified and trusted; 1 "
                                   "otherwise.")
    p.add_argument("pdf", type=Path)
    p.add_argument("--trust", type=Path, default=None,
                   help="trusted CA certificate(s), PEM or DER (default: LEUKO_LAB_CA); without either nothing is "
                        "trusted and verify exits 1")
    p.add_argument("--allow-untrusted", action="store_true",
                   help="exit 0 for an intact, unmodified signature whose signer is not trusted (the JSON still "
                        "says trusted: false)")
    p.set_defaults(func=_verify)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a sample's results as FHIR R4B JSON and/or per-cell CSV",
                       description="Write a report version as a validated FHIR R4B (4.3.0) Bundle (DiagnosticReport + one "
                                   "Observation per class) and/or the per-cell results as CSV. A signed version is "
                                   "exported from what its signed PDF carries (the PDF attached to the bundle); an "
                                   "unsigned one from the current results.")
    p.add_argument("--sample", required=True, help="sample id")
    p.add_argument("--db", type=Path, default=None, help="DuckDB file (default: LEUKO_DB_PATH or var/leuko.duckdb)")
    p.add_argument("--fhir", type=Path, default=None, help="FHIR Bundle JSON file to write")
    p.add_argument("--csv", type=Path, default=None, help="per-cell CSV file to write")
    p.add_argument("--version", type=int, default=None,
                   help="report version (default: the latest); a signed version is exported as signed")
    p.set_defaults(func=_export)


def _add_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create a lab CA and issue signer keys",
                          description="Signing keys for a fresh installation (a real CA's PKCS#12 works too).")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = ksub.add_parser("init-ca", help="create a self-signed lab CA in a folder",
                        description="Write ca.pem and the encrypted ca.key.pem into --out. CA password: "
                                    "--ca-password-file or LEUKO_CA_PASSWORD.")
    k.add_argument("--out", type=Path, required=True, help="folder for ca.pem and ca.key.pem")
    k.add_argument("--name", required=True, help="CA common name, e.g. 'Haematology Lab Signing CA'")
    k.add_argument("--organisation", default="", help="organisation name")
    k.add_argument("--years", type=int, default=10)
    k.add_argument("--key-type", choices=("rsa", "ec"), default="rsa")
    k.add_argument("--ca-password-file", type=Path, default=None)
    k.set_defaults(func=_init_ca)
    k = ksub.add_parser("issue", help="issue a signer's PKCS#12 from the lab CA",
                        description="Issue a signer key + certificate (+ CA chain) as a password-protected "
                                    "PKCS#12. Passwords: --ca-password-file/LEUKO_CA_PASSWORD and "
                                    "--password-file/LEUKO_SIGNER_PASSWORD.")
    k.add_argument("--ca", type=Path, required=True, help="CA folder made by init-ca")
    k.add_argument("--name", required=True, help="signer's full name")
    k.add_argument("--role", required=True, help="signer's role, e.g. 'consultant haematologist'")
    k.add_argument("--email", default="")
    k.add_argument("--out", type=Path, required=True, help="PKCS#12 file to write (must not exist)")
    k.add_argument("--years", type=int, default=2)
    k.add_argument("--key-type", choices=("rsa", "ec"), default="rsa")
    k.add_argument("--ca-password-file", type=Path, default=None)
    k.add_argument("--password-file", type=Path, default=None, help="signer's new key password (first line)")
    k.set_defaults(func=_issue)


def _add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="time building, rendering and signing a full report",
                       description="--source store (default): build a synthetic store with an analysed --cells "
                                   "sample, two more and a saved study, then time sample_results (with and without "
                                   "the bootstrap), build_context, render and sign --repeat times. --source demo: "
                                   "render and sign the in-memory demo report. Throw-away keys and folders.")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--source", choices=("store", "demo"), default="store")
    p.add_argument("--cells", type=int, default=1000, help="cells of the reported sample (store source)")
    p.add_argument("--reference-intervals", type=Path, default=None, help="reference-interval file to use")
    p.set_defaults(func=_bench)


COMMANDS = (_add_render, add_workflow_commands, _add_sign, _add_verify, _add_export, _add_keys,
            _add_bench)  # in the order --help lists


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)  # path-building tracebacks for untrusted chains
    logging.getLogger("pyhanko_certvalidator").setLevel(logging.CRITICAL)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except (PhenotypingError, ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
