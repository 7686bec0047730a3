"""The one base class of expected failures: bad input, a missing file, a wrong checkpoint, an unsupported setting.

Tools catch :class:`VideoSTError` at their boundary and print its message as one ``error: ...`` line with exit
code 2; anything else that escapes is a bug and keeps its traceback. Messages name the file, line, key and value.
"""

from __future__ import annotations


class VideoSTError(Exception):
    """An expected failure; the message is the whole story, for one line."""


class CheckpointError(VideoSTError, ValueError):
    """A checkpoint that cannot be read, converted or used as asked; the message names the file and the cause."""
