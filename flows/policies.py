"""How stage tasks retry and what they cache on: the retry policy and the content-based cache key."""

from collections.abc import Callable

from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from common.files import sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError

# Bad input or config fails at once; everything else (network, CUDA out of memory, a killed worker
# process) may pass, so it is retried after 10, 20, 40 s, each stretched by up to 50% of jitter.
PERMANENT_ERRORS = (BadInputError, ValidationError)


def is_transient(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry unless the task failed on bad input or config."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception:
        return True
    return True


RETRIES = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
)


def content_cache_key(fingerprint: Callable[..., str]) -> Callable[[TaskRunContext, dict], str]:
    """A cache key from what is on disk: the stage's input fingerprint (content hashes and config).

    The data root is part of the key too, so two data roots with equal inputs never share outputs.
    """

    def key(context: TaskRunContext, parameters: dict) -> str:
        root = DataRoot(parameters["data_dir"])
        extra = {k: v for k, v in parameters.items() if k not in ("config", "data_dir", "force")}
        inputs = fingerprint(parameters["config"], root, **extra)
        return sha256_bytes(f"{context.task.name}|{root.root}|{inputs}".encode())

    return key
