"""What every page shares: the store and job runner of this server process, the logged-in user, navigation, the
sample picker and header, one-line error messages, and uploads streamed to disk."""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import streamlit as st

from pages import _session
from phenotyping.auth import can, record_logout
from phenotyping.errors import PhenotypingError
from phenotyping.jobs import JobRunner
from phenotyping.schemas import Role, User
from phenotyping.settings import get_settings
from phenotyping.store import Store

#: Errors a user can act on: shown as one line, never as a traceback.
USER_ERRORS = (PhenotypingError, ValueError, KeyError, FileNotFoundError, FileExistsError, TimeoutError)
STATUS_BADGE = {"new": "gray", "analysed": "blue", "reviewed": "orange", "signed": "green", "amended": "violet"}


@st.cache_resource(show_spinner=False)
def get_store() -> Store:
    """The server's single read-write connection (DuckDB allows one writer per file); a cursor per thread."""
    return Store.from_settings(get_settings())


@st.cache_resource(show_spinner=False)
def get_runner() -> JobRunner:
    """The server's background job runner: one worker for analyses (prediction, evaluation) and one for training, so
    a training job never holds up an analysis. Marks jobs of a previous server process failed and starts loading the
    usable models in the background, so the first analysis does not wait for torch and the weights."""
    runner = JobRunner(get_store(), workers=1)
    if get_settings().warm_up_models:
        runner.warm_up()
    return runner


# -- user text -------------------------------------------------------------------------------------------------------
# What Markdown in Streamlit can turn into something other than text: links and images ([ ] !), autolinks and HTML
# (< >), emphasis and code (* _ ~ `), emoji, icons and colour directives (:), LaTeX ($), headings (#), table cells (|)
# and the escape character itself. Other punctuation only matters at the start of a line; line breaks are removed.
_MD_SPECIAL = re.compile(r"([\\`*_~\[\]<>!:$#|])")


def md(value: object) -> str:
    """``value`` as literal text inside Streamlit Markdown (st.markdown, st.caption, st.info and the other messages,
    widget labels, radio options, tab names, help tooltips).

    The characters Markdown acts on inside a line are backslash-escaped (CommonMark allows it for every ASCII
    punctuation character) and line breaks become spaces, so user text (a pseudonym, a display name, a file name, a
    class label, an error quoting them) can never become an image that every viewer's browser fetches, a link, HTML
    or a Streamlit directive such as ``:red[…]``. Use it for every value a user or a file supplied; plain-text
    elements (st.text, st.code, st.dataframe, selectbox options, input values) need nothing.
    """
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).splitlines()))


# -- the user --------------------------------------------------------------------------------------------------------
#: Session keys of the login: the account's session epoch when this session logged in, and the time (time.time())
#: of the session's last interaction.
SESSION_EPOCH, LAST_ACTIVE = "_session_epoch", "_last_active"
_ENDED = "_session_ended"


def start_session(user: User, *, sid: str | None = None) -> None:
    """Log ``user`` in for this browser session: remember the account's session epoch and the time, and start the
    session cookie that keeps the login across reloads (``sid``: the id of a session restored from its cookie)."""
    st.session_state["username"] = user.username
    st.session_state[SESSION_EPOCH] = get_store().users.session_epoch(user.username)
    st.session_state[LAST_ACTIVE] = time.time()
    _session.begin(sid)


def current_user() -> User | None:
    """The logged-in user, re-read from the store on every rerun.

    A browser session without a login is logged in from a valid session cookie (:func:`pages._session.restore`:
    the same checks as below, and audited), through :func:`start_session`. The session ends (audited as ``logout``, with a message on the login screen) when the account is gone or
    deactivated, when its session epoch is not the one recorded at login (a password change or reset, a role change
    or a deactivation since), or when the last interaction is longer ago than ``Settings.idle_timeout_min``.
    """
    name = st.session_state.get("username")
    store = get_store()
    if not name:
        restored = _session.restore(store)
        if restored is None:
            return None
        start_session(restored[0], sid=restored[1])
        return restored[0]
    found = store.get_user(name)
    idle_min = get_settings().idle_timeout_min
    last = st.session_state.get(LAST_ACTIVE)
    if found is None or not found[0].active:
        ended = ("account deactivated", "Your account was deactivated; ask an administrator.")
    elif st.session_state.get(SESSION_EPOCH) != store.users.session_epoch(name):
        ended = ("account changed", "Your session ended because the account's password, role or status changed; "
                                    "please log in again.")
    elif not isinstance(last, (int, float)) or time.time() - last > idle_min * 60:
        ended = ("idle timeout", f"You were logged out after {idle_min:g} minutes without activity; please log in "
                                 "again.")
    else:
        st.session_state[LAST_ACTIVE] = time.time()
        return found[0]
    logout(reason=ended[0])
    st.session_state[_ENDED] = ended[1]
    return None


def session_ended_message() -> str | None:
    """Why this session was logged out (once), for the login screen."""
    return st.session_state.pop(_ENDED, None)


def require_user() -> User:
    user = current_user()
    if user is None:
        st.warning(md(session_ended_message() or "Please log in."))
        st.stop()
    return user


def allowed(user: User, permission: str) -> bool:
    return can(user.role, permission)


def require(user: User, permission: str, what: str) -> None:
    """Stop the page with a message when ``user``'s role lacks ``permission``."""
    if not can(user.role, permission):
        st.info(f"{what} is for {' and '.join(sorted(r.value for r in _roles(permission)))} accounts; "
                f"you are logged in as a {user.role.value}.")
        st.stop()


def _roles(permission: str) -> Iterable[Role]:
    return [r for r in Role if can(r, permission)]


def logout(*, reason: str = "logged out") -> None:
    """End the local session (audited as ``logout`` with ``reason``) and its session cookie (ended for good in this
    server process; the login screen clears it in the browser), and the identity provider's session where the user
    came in through it (else the login screen would sign them straight back in)."""
    name = st.session_state.get("username")
    if name:
        record_logout(get_store(), name, reason=reason)
    ended = _session.end()
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    _session.after_end(ended)
    if getattr(st.user, "is_logged_in", False):
        st.logout()


#: Every screen after login: (script, title, icon, section, permission needed to see it or None).
PAGES: list[tuple[str, str, str, str, str | None]] = [
    ("pages/samples.py", "Samples", ":material/science:", "Sample", None),
    ("pages/analyse.py", "Analyse", ":material/memory:", "Sample", None),
    ("pages/review.py", "Review", ":material/grid_view:", "Sample", None),
    ("pages/agreement.py", "Agreement", ":material/compare_arrows:", "Sample", None),
    ("pages/report.py", "Report", ":material/description:", "Sample", None),
    ("pages/models.py", "Models", ":material/model_training:", "Laboratory", None),
    ("pages/audit.py", "Audit", ":material/history:", "Laboratory", "audit.read"),
    ("pages/users.py", "Users", ":material/group:", "Laboratory", "users.manage"),
    ("pages/account.py", "My account", ":material/person:", "Laboratory", None),
]


def _url_path(script: str) -> str:
    return PurePosixPath(script).stem


def nav_pages() -> list[Any] | dict[str, list[Any]]:
    """The pages this session may see: the review steps, then the lab pages by role (Samples first).

    Logged out, Login is the default page and every other page's URL (``/review?sample=S1``) is registered too, as
    a hidden page that shows the login: the URL stays, so after the login the rerun opens the page it names (with
    its query parameters) instead of "Page not found". The session cookie is written or cleared here, every run.
    """
    user = current_user()
    if user is None:
        _session.sync_cookie(None, None)
        login = [st.Page("pages/login.py", title="Log in", icon=":material/login:", default=True)]
        return login + [st.Page("pages/login.py", title="Log in", url_path=_url_path(script), visibility="hidden")
                        for script, *_ in PAGES]
    _session.sync_cookie(user.username, st.session_state.get(SESSION_EPOCH))
    get_runner()  # started with the first logged-in page: fails orphaned jobs, loads the usable models
    sections: dict[str, list[Any]] = {}
    for script, title, icon, section, permission in PAGES:
        if permission is None or can(user.role, permission):
            sections.setdefault(section, []).append(st.Page(script, title=title, icon=icon,
                                                            default=not sections))
    with st.sidebar:
        st.caption(f"Logged in as **{md(user.display_name or user.username)}** · {user.role.value}")
        if st.button("Log out", key="logout", icon=":material/logout:"):
            logout()
            st.rerun()
    return sections


# -- messages --------------------------------------------------------------------------------------------------------
def one_line(e: BaseException) -> str:
    """The first line of an error's message (pydantic validation errors reduced to the field and the rule)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args and not isinstance(e, PhenotypingError) else str(e)
    if "validation error" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if len(lines) >= 3:
            return f"{lines[1]}: {lines[2].split(' [type=')[0]}"
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    """Call ``fn``; a user error becomes a one-line ``st.error``. Returns ``(ok, result)``."""
    try:
        return True, fn(*args, **kwargs)
    except USER_ERRORS as e:
        st.error(md(one_line(e)), icon=":material/error:")
        return False, None


def hiding_paths(fn: Callable[..., Any], words: Mapping[str, str]) -> Callable[..., Any]:
    """``fn``, whose user errors name none of the server paths in ``words`` (each replaced by its words, e.g. the
    installed key file by "your installed signing key"): a screen never shows where the server keeps files."""
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            text = one_line(e)
            for path, said in words.items():
                text = text.replace(path, said)
            raise ValueError(text) from e

    return call


def flash(message: str, kind: str = "success") -> None:
    """Show ``message`` once, after the next rerun, as plain text (it is escaped: messages quote user values)."""
    st.session_state["_flash"] = (kind, message)


def show_flash() -> None:
    kind, message = st.session_state.pop("_flash", (None, None))
    if message:
        getattr(st, kind)(md(message))


# -- samples ---------------------------------------------------------------------------------------------------------
def pick_sample(store: Store) -> str | None:
    """The sample the sample pages work on, chosen in the sidebar (kept across pages) and kept in the URL
    (``?sample=ID``), so a link or a reload opens it; a link naming a sample that does not exist says so."""
    samples = store.list_samples()
    ids = [s["id"] for s in samples]
    linked = st.query_params.get("sample")
    if linked and linked not in ids:
        st.warning(f"The link names sample {md(linked)}, which does not exist (or was deleted); pick one from the "
                   "list." if ids else f"The link names sample {md(linked)}, which does not exist.",
                   icon=":material/link_off:")
    elif linked:
        st.session_state["sample_id"] = linked
    if not samples:
        st.info("No samples yet: create one on the Samples screen.")
        return None
    current = st.session_state.get("sample_id")
    with st.sidebar:
        sel = st.selectbox("Sample", ids, index=ids.index(current) if current in ids else 0)
    st.session_state["sample_id"] = sel
    if st.query_params.get("sample") != sel:
        st.query_params["sample"] = sel
    return sel


def sample_header(store: Store, sample_id: str) -> None:
    """Id, specimen, status, cells and analysis model of the sample, on top of every sample screen."""
    s = store.get_sample(sample_id)
    model = store.analysis_model(sample_id)
    with st.container(border=True):
        c1, c2, c3, c4, c5 = st.columns([3, 2, 2, 2, 4])
        c1.markdown(f"**Sample**  \n### {md(s.id)}")
        c2.markdown(f"**Specimen**  \n{s.specimen.value.upper()}")
        c3.markdown(f"**Status**  \n:{STATUS_BADGE[s.status.value]}-badge[{s.status.value}]")
        c4.markdown(f"**Cells**  \n{store.count_cells(sample_id):,}")
        collected = s.collected_at.strftime("%Y-%m-%d %H:%M UTC") if s.collected_at else "not recorded"
        c5.markdown(f"**Pseudonym** {md(s.patient_pseudonym) or '—'}  \n**Collected** {collected}  \n"
                    f"**Model** {md(model) if model else 'not analysed yet'}")


def signed_version(store: Store, sample_id: str) -> Any | None:
    """The signed report version that locks the sample's results (its latest version, when signed), or None.

    The store refuses changes to a locked sample's cells, QC, predictions, reviews and manual counts; the screens
    use this to say so up front and to disable the actions instead of letting them fail."""
    versions = store.list_report_versions(sample_id)
    return versions[-1] if versions and versions[-1].signed_at is not None else None


def lock_notice(locked: Any, what: str) -> None:
    """Say that ``what`` cannot change because the sample's report version ``locked`` is signed, and how to go on."""
    st.info(f"Report v{locked.version} was signed by {md(locked.signed_by)} on {locked.signed_at:%Y-%m-%d %H:%M} UTC, "
            f"so {what} is locked. To change it, amend the report (with a reason) on the Report screen.",
            icon=":material/lock:")


def results_token(store: Store, sample_id: str) -> tuple[Any, ...]:
    """Changes whenever the sample's counted cells can change (reviews, predictions, analysis model, QC)."""
    model = store.analysis_model(sample_id)
    n_pred = len(store.predicted_cell_ids(sample_id, model)) if model else 0
    return (sample_id, model, n_pred, len(store.list_review_actions(sample_id)), store.count_cells(sample_id))


def sample_results_cached(store: Store, sample_id: str, *, n_bootstrap: int = 0) -> Any:
    """:func:`phenotyping.analysis.results.sample_results`, recomputed only when :func:`results_token` changes.

    ``n_bootstrap=0`` (the default on interactive screens) gives the raw differential with its exact CIs and the
    corrected point estimates in about 0.1 s per 1,000 cells; the corrected CIs need the bootstrap (seconds).
    """
    from phenotyping.analysis.results import sample_results

    token = (*results_token(store, sample_id), n_bootstrap)
    cache = st.session_state.setdefault("_results_cache", {})
    if token not in cache:
        if len(cache) > 8:
            cache.clear()
        cache[token] = sample_results(store, sample_id, n_bootstrap=n_bootstrap)
    return cache[token]


def differential_rows(res: Any) -> list[dict[str, Any]]:
    """The differential as table rows: raw count, %, 95 % CI and the prior-shift-corrected % with its CI."""
    d = res.differential
    corrected = d.corrected
    corr = {}
    if corrected is not None:
        corr = {lab: (p, lo, hi) for lab, p, lo, hi in zip(corrected.labels, corrected.percent, corrected.ci_low,
                                                            corrected.ci_high)}
    rows = []
    for c in d.raw.classes:
        row = {"class": c.label, "cells": c.count, "raw %": round(c.percent, 1),
               "raw 95% CI": f"{c.ci_low:.1f}–{c.ci_high:.1f}"}
        if corrected is not None:
            p, lo, hi = corr.get(c.label, (float("nan"),) * 3)
            row[f"corrected % ({corrected.method})"] = round(p, 1)
            row["corrected 95% CI"] = f"{lo:.1f}–{hi:.1f}" if math.isfinite(lo) and math.isfinite(hi) else "—"
        rows.append(row)
    return rows


def result_metrics(res: Any) -> None:
    """The four counts above a differential: cells, counted, unidentified (awaiting review), excluded."""
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Cells", f"{len(res.cells):,}")
    m2.metric("Counted", f"{res.differential.raw.n_counted:,}")
    m3.metric("Unidentified (await review)", f"{res.n_unidentified:,}")
    m4.metric("Excluded", f"{sum(res.exclusions.values()) - res.n_unidentified:,}")


def show_differential(res: Any, *, key: str) -> None:
    """The differential table (:func:`differential_rows`), percentages with one decimal throughout."""
    rows = differential_rows(res)
    st.dataframe(rows, hide_index=True, width="stretch", key=key,
                 column_config={k: st.column_config.NumberColumn(format="%.1f")
                                for k in (rows[0] if rows else {}) if "%" in k and "CI" not in k})


# -- uploads ---------------------------------------------------------------------------------------------------------
def safe_relative(name: str) -> PurePosixPath:
    """An uploaded file's name as a relative path without '..' or a root (folder uploads keep their sub-folders)."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    if not parts:
        raise ValueError(f"unusable file name {name!r}")
    return PurePosixPath(*parts)


def save_uploads(files: Iterable[Any], folder: Path, *, chunk_bytes: int = 1 << 20) -> list[Path]:
    """Write uploaded files to ``folder`` in chunks (never the whole set in one bytes object); returns the paths."""
    out = []
    for f in files:
        dest = folder / safe_relative(f.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        f.seek(0)
        with open(dest, "wb") as fh:
            shutil.copyfileobj(f, fh, chunk_bytes)
        out.append(dest)
    return out


def release_uploads(files: Iterable[Any]) -> None:
    """Drop uploaded files from Streamlit's in-memory upload store of this session (as ``st.chat_input`` does with
    its files); the widget must then be replaced (a new key) so its state stops referring to them."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None or not isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        return
    for f in files:
        ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=f.file_id)


STAGING_MAX_AGE_S = 24 * 3600


def staging_dir(sample_id: str) -> Path:
    """This session's folder of uploaded files waiting to be ingested into ``sample_id``, on disk beside the
    database (the same disk as the image store). Folders of sessions idle for a day are removed."""
    import uuid

    token = st.session_state.setdefault("_upload_token", uuid.uuid4().hex)
    root = Path(get_settings().image_dir()).parent / ".upload-staging"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name != token and old.is_dir() and time.time() - old.stat().st_mtime > STAGING_MAX_AGE_S:
            shutil.rmtree(old, ignore_errors=True)
    return root / token / safe_relative(sample_id)


def stage_uploads(files: list[Any], sample_id: str) -> list[Path]:
    """Stream just-uploaded files to this session's staging folder for ``sample_id`` (chunked), then release them
    from Streamlit's memory. Returns the written paths."""
    folder = staging_dir(sample_id)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return save_uploads(files, folder)
    finally:
        release_uploads(files)


def staged_files(sample_id: str) -> list[Path]:
    """Files of this session staged for ``sample_id``, sorted by their path in the upload."""
    folder = staging_dir(sample_id)
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def clear_staged(sample_id: str) -> None:
    shutil.rmtree(staging_dir(sample_id), ignore_errors=True)
