"""Sync handlers in worker threads (being built)."""

from __future__ import annotations

from typing import Any

__all__ = ["run_sync_handler"]


async def run_sync_handler(
    handler_class: type, request: Any, client_address: Any, server: Any
) -> None:
    raise NotImplementedError(f"{handler_class.__qualname__} is a sync handler: not supported yet")
