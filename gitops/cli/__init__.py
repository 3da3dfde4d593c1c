"""The ``gitops`` command line: thin click commands that parse, call a stage, and print.

Exit codes: 0 all good; 1 apply or verify failed (or a temporary failure: Git remote, SSH,
lock held, the daemon unreachable mid-wait); 2 invalid declaration or usage (also an operator
control refusing the command); 0 also when the reader of stdout closes it (``| head``).
``--json`` prints one JSON document on stdout; progress goes
to stderr, live per host on a terminal, plain lines otherwise (``NO_COLOR`` is honoured).
Every command that records something ends with one line naming the run (``run #12:
succeeded, 3 changed, 42 checks passed``). Errors are one clear message, never a traceback.

One module per command group (``pipeline``, ``status``, ``history``, ``controls``,
``incidents``, ``delivery``, ``preview``, ``run``), each imported only when its command runs
(``root.Main``); beside them what they share: ``options``, ``context``, ``output``,
``progress``, ``local`` (runs made here), ``remote`` (runs made by the daemon) and
``client`` (the daemon's HTTP API).
"""

from __future__ import annotations

from gitops.cli.progress import LiveProgress
from gitops.cli.root import main

__all__ = ["LiveProgress", "main"]
