"""Errors raised by the models package (kept separate so that ``models`` never imports ``pipeline``)."""

from __future__ import annotations


class EncoderError(Exception):
    """An encoder name, weights file, scaling argument or input does not fit.

    Args:
        where: the offending input. expected: what is needed. got: what was found. fix: how to repair it.
    """

    def __init__(self, where: str, expected: str, got: str, fix: str):
        self.where, self.expected, self.got, self.fix = where, expected, got, fix
        super().__init__(f"{where}: expected {expected}; got {got}. Fix: {fix}")
