"""What the apply worker's modules share: a host's operations in pyinfra's State (in order,
named, by service), and the progress line for the user."""

from __future__ import annotations

import sys
from typing import Any

from pyinfra.api.state import State

from gitops.pipeline.worker import PROGRESS_PREFIX

__all__ = ["host_ops", "op_name", "progress", "service_of"]


def progress(message: str) -> None:
    print(f"{PROGRESS_PREFIX}{message}", file=sys.stderr, flush=True)


def service_of(name: str) -> str | None:
    return name.split(" | ", 1)[0] if " | " in name else None


def op_name(state: State, op_hash: str) -> str:
    names = sorted(state.op_meta[op_hash].names)
    return names[0] if names else op_hash


def host_ops(state: State, host: Any) -> list[str]:
    """The hashes of the operations ``host`` has, in operation order."""
    return [op_hash for op_hash in state.get_op_order() if op_hash in state.ops[host]]
