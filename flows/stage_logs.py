"""The stages' own log lines in the Prefect run's Logs tab, not only on the console.

Stage packages log with `logging.getLogger(__name__)` and know nothing of Prefect; while a stage runs,
their records also go to the task run (or flow run) that runs it, at their own level. A stage logger
whose level nobody set logs at the level of Prefect's run loggers (INFO by default, PREFECT_LOGGING_LEVEL),
so a stage's INFO lines (training's evaluations, a warm start) show beside Prefect's own.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import get_run_context
from prefect.logging.handlers import APILogHandler

# The top-level packages whose loggers a stage writes to.
STAGE_LOGGERS = ("common", "scraper", "preprocess", "validate", "models", "export")


class RunLogHandler(APILogHandler):
    """Prefect's API log handler, bound to one run: records from the stage's own threads count too."""

    def __init__(self, flow_run_id, task_run_id) -> None:
        super().__init__()
        self.run_ids = {"flow_run_id": flow_run_id, "task_run_id": task_run_id}

    def prepare(self, record: logging.LogRecord) -> dict:
        return super().prepare(logging.makeLogRecord({**record.__dict__, **self.run_ids}))


@contextmanager
def stage_logs_to_run() -> Iterator[None]:
    """While the block runs, send the stage packages' log records to the current run's logs."""
    context = get_run_context()
    task_run = getattr(context, "task_run", None)
    if task_run is not None:
        handler = RunLogHandler(task_run.flow_run_id, task_run.id)
    else:
        handler = RunLogHandler(context.flow_run.id, None)
    run_level = logging.getLogger("prefect.task_runs").getEffectiveLevel()
    levels = {logging.getLogger(name): logging.getLogger(name).level for name in STAGE_LOGGERS}
    for logger, level in levels.items():
        logger.addHandler(handler)
        logger.setLevel(level or run_level)  # a level set in the logging config wins
    try:
        yield
    finally:
        for logger, level in levels.items():
            logger.removeHandler(handler)
            logger.setLevel(level)
