"""Errors a user can fix, at the bottom of the layer order so every layer may raise them.

``genba.cli`` prints any :class:`UserError` without a traceback and exits 2;
no layer imports ``genba.cli`` (it imports them all).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (a path, a flag, a preset): its message names the input."""


class CLIError(UserError):
    """A bad command line, raised by the ``commands.py`` modules while turning flags into calls."""
