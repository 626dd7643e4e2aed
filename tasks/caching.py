"""Prefect caching by content key, with the artifact store as the source of truth.

A task's Prefect cache key is its artifact's content key, so an unchanged rerun shows as
``Cached`` in Prefect's UI. When the store lacks the artifact (never built, deleted, corrupt),
the flow submits the task with ``refresh_cache=True`` and it is rebuilt even if Prefect
remembers an earlier result.
"""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.context import TaskRunContext


def by_content_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """cache_key_fn: '<task name>-<content key>[-<shard>]'."""
    shard = parameters.get("shard")
    suffix = f"-{shard}" if shard is not None else ""
    return f"{context.task.name}-{parameters['key']}{suffix}"


def submit(task: Task, exists: bool, **kwargs: Any) -> Any:
    """Submit ``task``; refresh its Prefect cache when the store lacks its output."""
    return task.with_options(refresh_cache=not exists).submit(**kwargs)


def was_cached(future: Any) -> bool:
    """True if Prefect answered the task from its cache."""
    return future.state.name == "Cached"
