"""Prefect caching by content key, with the artifact store as the source of truth.

A task's Prefect cache key is its artifact's content key, so an unchanged rerun shows as
``Cached`` in Prefect's UI. When the store lacks the artifact (never built, deleted, corrupt),
the flow submits the task with ``refresh_cache=True`` (``flows.runners.submit``) and it is
rebuilt even if Prefect remembers an earlier result.
"""

from __future__ import annotations

import errno
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State

from storage.errors import USER_ERRNOS

# the Prefect tag of tasks that run the generator or the classifier: on a cluster each takes one
# GPU slot (flows.runners.submit); on Prefect it can carry a tag concurrency limit
GPU_TAG = "gpu"


def by_content_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """cache_key_fn: '<task name>-<content key>[-<shard>]'."""
    shard = parameters.get("shard")
    suffix = f"-{shard}" if shard is not None else ""
    return f"{context.task.name}-{parameters['key']}{suffix}"


def was_cached(future: Any) -> bool:
    """True if Prefect answered the task from its cache."""
    return future.state.name == "Cached"


# errno values a user has to fix, and a missing file: retrying them only delays the message
_NOT_TRANSIENT = USER_ERRNOS | {errno.ENOENT}


def transient_io_error(task: Task, task_run: TaskRun, state: State) -> bool:
    """retry_condition_fn: retry a task only for an I/O error that may pass (a dropped
    connection, a timeout, an EIO from a network file system), never for a user's mistake or
    a bug."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno not in _NOT_TRANSIENT \
        and not isinstance(exc, (FileNotFoundError, PermissionError))


# the options of tasks that read and write the store for minutes (the shards): three retries,
# 5, 20 and 60 s apart, for transient I/O errors only
IO_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [5, 20, 60],
                              "retry_condition_fn": transient_io_error}
