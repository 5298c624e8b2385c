"""Prediction jobs: which usable models can read a sample's cells, what a rerun would do, and the job itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from phenotyping.errors import NotFoundError
from phenotyping.jobs._runner import JobError, JobRunner, Progress, active_job, usable_models

_KIND = {2: "2D images (C, H, W)", 3: "z-stacks (C, Z, H, W)"}


def model_input(card: Mapping[str, Any]) -> tuple[int, int, list[str]]:
    """``(channels, dims, channel names)`` a model takes, from its card (dims 2: images, 3: z-stacks)."""
    names = list((card.get("input") or {}).get("channels") or [])
    dims = (card.get("input") or {}).get("dims") or ((card.get("architecture") or {}).get("config") or {}).get("dims")
    return len(names), int(dims or 2), names


def input_problem(card: Mapping[str, Any], shapes: Sequence[Sequence[int]]) -> str | None:
    """Why a model cannot take cells of these stored shapes (``(C, H, W)`` or ``(C, Z, H, W)``), or None when it can.

    Checked before a prediction job starts, so that a model never runs for minutes on a sample it cannot read. A
    card that does not state its input (``input.channels``; cards written by ``train`` do) is not judged here: the
    job then fails, naming the mismatch, on the first batch."""
    n_chans, dims, names = model_input(card)
    if not n_chans:
        return None
    kinds = sorted({(int(s[0]), len(s) - 1) for s in shapes if len(s) >= 3})
    wrong = [(c, d) for c, d in kinds if c != n_chans or d != dims]
    if not wrong:
        return None
    have = ", ".join(f"{c} channel(s), {_KIND.get(d, f'{d}D')}" for c, d in wrong)
    return (f"model {card.get('id', '?')} takes {n_chans} channel(s) ({', '.join(names) or 'unnamed'}) as "
            f"{_KIND.get(dims, f'{dims}D')}, but this sample's cells have {have}")


def compatible_models(store: Any, sample_id: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The usable models that can take the sample's cells, and the others with the reason (:func:`input_problem`).
    A sample without cells is compatible with every model (there is nothing to run yet)."""
    shapes = {tuple(c.shape) for c in store.list_cells(sample_id)}
    ok, refused = [], {}
    for m in usable_models(store):
        problem = input_problem(m["card"], sorted(shapes))
        if problem is None:
            ok.append(m)
        else:
            refused[m["id"]] = problem
    return ok, refused


def rerun_note(store: Any, sample_id: str, model_id: str) -> str | None:
    """What running ``model_id`` again on the sample would do, when it has predicted cells of it already: the
    predicted cells keep their predictions and only the others are analysed (image-QC exclusions checked again);
    None for a first run."""
    from phenotyping.schemas import QCState

    done_ids = store.predicted_cell_ids(sample_id, model_id)
    if not done_ids:
        return None
    rest = [c for c in store.list_cells(sample_id) if c.id not in done_ids and c.qc_state != QCState.overridden]
    total = len(done_ids) + len(rest)
    if not rest:
        return (f"{model_id} has already predicted every cell of this sample ({len(done_ids):,}); running it again "
                "keeps those predictions and predicts 0 cells, so the results do not change")
    excluded = sum(1 for c in rest if c.qc_state == QCState.excluded)
    parts = [f"{excluded:,} excluded by image QC, checked again" if excluded else "",
             f"{len(rest) - excluded:,} not analysed yet" if len(rest) > excluded else ""]
    return (f"{model_id} has already predicted {len(done_ids):,} of the {total:,} cells; running it again keeps "
            f"those predictions and analyses only the other {len(rest):,} ({'; '.join(p for p in parts if p)})")


def submit_prediction(runner: JobRunner, sample_id: str, model_id: str, *, actor: str,
                      device: str | None = None) -> int:
    """Start QC + prediction of a sample's cells with a usable registered model; returns the job id.

    The job runs where ``runner.job_worker`` says: ``"process"``, the runner's analysis worker process
    (:mod:`phenotyping.jobs.worker`: decoding, QC and the model there, this thread storing what it sends), or
    ``"thread"``, everything in the lane's thread (:func:`phenotyping.analysis.inference.predict_sample`). Both store
    the same QC outcomes, predictions, domain check and audit events. When it finishes, the model becomes the
    sample's analysis model and a new sample's status becomes ``analysed``.

    Raises:
        JobError: a prediction of this sample is already queued or running.
        NotFoundError: the model is not registered as usable (the message lists those that are).
    """
    store = runner.store
    store.get_sample(sample_id)
    models = {m["id"]: m for m in usable_models(store)}
    if model_id not in models:
        raise NotFoundError(f"model {model_id!r} is not registered as usable; usable models: "
                            f"{sorted(models) or '(none: an admin marks one usable on the Models screen)'}")
    running = active_job(store, kind="predict", sample_id=sample_id)
    if running is not None:
        raise JobError(f"job {running['id']} is already analysing sample {sample_id}; wait for it to finish")
    if store.count_cells(sample_id) == 0:
        raise ValueError(f"sample {sample_id} has no cells; upload its images first")
    problem = input_problem(models[model_id]["card"], sorted({tuple(c.shape) for c in store.list_cells(sample_id)}))
    if problem is not None:
        fits = [m["id"] for m in compatible_models(store, sample_id)[0]]
        raise ValueError(f"{problem}; choose a model for this kind of image"
                         + (f" ({', '.join(fits)})" if fits else " (no usable model takes them: train one)"))
    model_dir = models[model_id]["path"]

    def work(progress: Progress) -> dict[str, Any]:
        from phenotyping.analysis.inference import cpu_threads
        from phenotyping.schemas import SampleStatus

        def report(done: int, total: int, rate: float) -> None:
            progress(done, total, rate, f"{done}/{total} cells analysed")

        def stage(what: str, done: int, total: int) -> None:  # a new stage is written at once, image counts at most
            progress(done, total, None, what, force=not what.startswith("reading images"))  # every min_interval_s

        threads = min(cpu_threads(), progress.cpu_share())
        if runner.job_worker == "process":
            progress(0, store.count_cells(sample_id), None, f"starting the analysis of {model_id}", force=True)
            run = runner.process_worker().predict(store, sample_id, model_dir, device=device, progress=report,
                                                  actor=actor, threads=threads, stage=stage)
            used = run.model_id
        else:
            run, used = _predict_in_thread(store, sample_id, model_id, model_dir, progress, device=device, actor=actor,
                                     threads=threads, report=report, stage=stage)
        store.set_analysis_model(sample_id, used, actor=actor)
        if store.get_sample(sample_id).status == SampleStatus.new:
            store.set_sample_status(sample_id, SampleStatus.analysed, actor=actor)
        return _result(run, used)

    return runner.submit("predict", work, actor=actor, sample_id=sample_id,
                         params={"model_id": model_id, "device": device}, total=store.count_cells(sample_id))


def _predict_in_thread(store: Any, sample_id: str, model_id: str, model_dir: str, progress: Progress, *,
                       device: str | None, actor: str, threads: int, report: Any, stage: Any) -> tuple[Any, str]:
    """The whole prediction in this thread (``job_worker="thread"``): load the model here, then ``predict_sample``;
    returns the run and the id of the model loaded."""
    import phenotyping.jobs as jobs  # looked up at call time: tests replace jobs.load_model_cached
    from phenotyping.analysis import inference

    progress(0, store.count_cells(sample_id), None, f"loading the model {model_id}", force=True)
    lm = jobs.load_model_cached(model_dir)
    progress(0, store.count_cells(sample_id), None, f"model {model_id} loaded; reading the cells", force=True)
    return inference.predict_sample(store, sample_id, lm, device=device, progress=report, actor=actor,
                                    threads=threads, stage=stage), lm.id


def _result(run: Any, model_id: str) -> dict[str, Any]:
    """A prediction job's result: the run's record and the message the Analyse screen shows."""
    out = run.to_dict()
    kept = getattr(run, "already_done", 0)
    if kept and not (run.predicted or run.excluded):
        out["message"] = (f"nothing new to analyse: all {kept:,} cells already had {model_id}'s prediction or "
                          "image-QC result, which are kept; 0 cells predicted")
    else:
        out["message"] = (f"{run.predicted} cells predicted, {run.excluded} excluded by image QC, "
                          f"{run.unidentified} unidentified, {out['cells_per_second']} cells/s"
                          + (f"; {kept:,} cells analysed by {model_id} before were kept" if kept else ""))
    return out
