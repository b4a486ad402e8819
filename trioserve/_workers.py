"""The worker-process pool (being built)."""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["serve_process_pool"]


async def serve_process_pool(
    server: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    raise NotImplementedError("the process pool is not supported yet")
