"""How stage tasks retry and what they cache on: the retry policy, bad-input errors, the cache key."""

import errno
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from common.files import sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError

# Bad input or config fails at once; everything else (network, CUDA out of memory, a killed worker
# process) may pass, so it is retried after 10, 20, 40 s, each stretched by up to 50% of jitter.
PERMANENT_ERRORS = (BadInputError, ValidationError)

# Disk errors no retry can mend: each with what the user can do about it.
DISK_PROBLEMS = {
    errno.ENOSPC: "the disk is full; free space or set data_dir to a folder on another disk",
    errno.EDQUOT: "the disk quota is used up; free space or set data_dir to a folder on another disk",
    errno.EROFS: "the file system is read-only; set data_dir to a writable folder",
    errno.EACCES: "permission denied; make it writable for this user or set data_dir to another folder",
    errno.EPERM: "operation not permitted; make it writable for this user or set data_dir to another folder",
}
# torch.save reports a failed write (almost always a full disk) as a RuntimeError from its zip writer.
TORCH_WRITE_FAILED = ("inline_container.cc", "unexpected pos")


def disk_problem(error: BaseException) -> str | None:
    """What a permanent disk error means and how to fix it; None for anything else."""
    if isinstance(error, OSError) and error.errno in DISK_PROBLEMS:
        return DISK_PROBLEMS[error.errno]
    if isinstance(error, RuntimeError) and all(part in str(error) for part in TORCH_WRITE_FAILED):
        return "a checkpoint could not be written (is the disk full?); free space or set data_dir elsewhere"
    return None


def is_transient(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry unless the task failed on bad input, config or disk."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception as e:
        return disk_problem(e) is None
    return True


RETRIES = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
)


@contextmanager
def permanent_errors_named(data_dir: str) -> Iterator[None]:
    """Turn a permanent disk error into a one-line BadInputError that names the path and the fix."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        problem = disk_problem(e)
        if problem is None:
            raise
        detail = " ".join(str(e).split())  # an OSError's text names the file
        raise BadInputError(f"data_dir {data_dir}: {problem} ({detail})") from e


def check_data_root(data_dir: str) -> None:
    """Fail at once, naming the path and the fix, unless data_dir is (or can be) a writable folder."""
    path = Path(data_dir)
    fix = "set data_dir to a folder this user can write (it is created when missing)"
    if path.exists() and not path.is_dir():
        raise BadInputError(f"data_dir {path} is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(f"data_dir {path} cannot be created ({e.strerror}); {fix}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise BadInputError(f"data_dir {path} is not writable ({e.strerror}); {fix}") from None


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
