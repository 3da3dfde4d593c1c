"""Who is acting: the person a run, a control or an event is recorded as (``who``); cheap to
import, so that a command's startup loads nothing else for it.
"""

from __future__ import annotations

import os
import pwd

from gitops import freetext

__all__ = ["who"]


def who() -> str:
    """The person acting: the user behind sudo, else the login name, else the uid's name.
    A variable that is not one clean line (``freetext.problem``) is passed over."""
    for variable in ("SUDO_USER", "USER", "LOGNAME"):
        name = os.environ.get(variable, "").strip()
        if freetext.problem(name) is not None:
            continue
        if name and not (variable == "SUDO_USER" and name == "root" and os.getuid() != 0):
            return name
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"
