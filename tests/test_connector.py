"""The apply worker's connection layer without a host (``gitops.workers.connector``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pyinfra.api.util import get_operation_order_from_stack

from gitops.workers.connector import operation_order


def _both(state: object) -> tuple[list[int], list[int]]:
    return get_operation_order_from_stack(state), operation_order(state)  # type: ignore[arg-type]


def _nested(state: object) -> tuple[list[int], list[int]]:
    return _both(state)


@pytest.mark.parametrize("deploy_file", [None, __file__])
@pytest.mark.parametrize("cli", [False, True])
def test_operation_order_is_pyinfras(deploy_file: str | None, cli: bool,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Operations are ordered by the same line numbers pyinfra's stack reading gives."""
    import pyinfra

    monkeypatch.setattr(pyinfra, "is_cli", cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    theirs, ours = _nested(state)
    assert ours == theirs
    assert len(ours) >= 3


def test_global_arguments_are_pyinfras() -> None:
    """The apply worker's cached list of pyinfra's global arguments is pyinfra's list."""
    from pyinfra.api.arguments import all_global_arguments

    from gitops.workers.connector import _global_arguments

    assert _global_arguments() == all_global_arguments()
    assert _global_arguments() == all_global_arguments()  # the cached answer too
