"""Background jobs for the app: lanes of worker threads recording their progress in the store's jobs table.

``_runner``: :class:`JobRunner`, :class:`Progress`, the lanes and CPU shares; ``_predict``: prediction jobs and which
models can read a sample; ``_train``: training and evaluation jobs and the export of labelled cells; ``worker``: the
analysis worker process that prediction jobs run in (``LEUKO_JOB_WORKER=process``, the default); ``bench``: the
app's job against the CLI (``python -m phenotyping bench app-job``).
"""

from phenotyping.ingest._runs import (INGEST_EVENT, MAX_RECORDED_CHARS, MAX_RECORDED_REJECTIONS,  # noqa: F401
                                      IngestRun, ingest_and_record, ingest_runs)
from phenotyping.jobs._predict import (compatible_models, input_problem, model_input, rerun_note,  # noqa: F401
                                       submit_prediction)
from phenotyping.jobs._runner import (DEFAULT_LANE, DONE, FAILED, FINISHED, LANES, QUEUED, RUNNING,  # noqa: F401
                                      JobError, JobFn, JobRunner, Progress, active_job, available_cores,
                                      set_torch_threads, usable_models, warm_up_models)
from phenotyping.jobs._train import (LabelledExport, cell_label, export_labelled_cells, label_counts,  # noqa: F401
                                     submit_evaluation, submit_training)
from phenotyping.models.checkpoint import load_model_cached  # noqa: F401 - the thread path loads through it
