"""DiffMAS's messages go through Python ``logging``, under the ``diffmas`` logger.

Quiet by default: warnings (settings that differ from a checkpoint's, a slow dtype on this CPU,
skipped training steps) reach stderr; ``diffmas -v`` adds what each step is doing (info),
``-vv`` the details (debug). A program using the library configures the ``diffmas`` logger like
any other (``logging.getLogger("diffmas").setLevel(logging.INFO)``); without configuration
warnings still print, through Python's last-resort handler.
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("diffmas")


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a message comes (so that output
    captured or redirected after the handler was made still gets it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbosity: int = 0) -> None:
    """Messages of ``diffmas`` on stderr as ``level: message``: warnings and errors (0), info (1),
    debug (2 or more). Calling it again only changes the level."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    LOGGER.setLevel(level)
    if not any(isinstance(h, _CurrentStderr) for h in LOGGER.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        LOGGER.addHandler(handler)
    logging.addLevelName(logging.WARNING, "warning")
    logging.addLevelName(logging.INFO, "info")
    logging.addLevelName(logging.DEBUG, "debug")
