"""Typed errors for the pipeline.

Every error a user can cause carries three things: what input was wrong (a file, a column, a params key,
an argument), what was expected and what was found, and how to fix it. Stages print the message and exit
non-zero; library callers can catch the specific class. Encoder errors are
:class:`models.errors.EncoderError` (same fields), so that ``models`` never imports ``pipeline``.
"""

from __future__ import annotations

import warnings
from typing import Iterable


class PipelineError(Exception):
    """Base class of every error the pipeline raises on bad input.

    Args:
        where: the offending input (file path, ``file:column``, params key or argument name).
        expected: what the pipeline needs there.
        got: what it found.
        fix: how the user can repair it.
    """

    def __init__(self, where: str, expected: str, got: str, fix: str):
        self.where = shorten(where)
        self.expected = shorten(expected)
        self.got = shorten(got)
        self.fix = shorten(fix)
        super().__init__(f"{self.where}: expected {self.expected}; got {self.got}. Fix: {self.fix}")


MAX_FIELD = 300


def shorten(text, limit: int = MAX_FIELD) -> str:
    """``text`` on one line and at most ``limit`` characters (long values are cut in the middle), so that an
    error stays one readable line whatever the input (a huge YAML value, a long list of ids)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


class ConfigError(PipelineError):
    """A params/config key is unknown, missing or has an invalid value."""


class UnitsError(PipelineError):
    """The units table (trial units: ids, treatment, outcome, covariates, location) is invalid."""


class ImageryError(PipelineError):
    """A raster cannot be used: unreadable, no CRS, inconsistent bands, points outside every scene."""


class TilingError(PipelineError):
    """Scales or windows are invalid (negative sizes, windows smaller than a pixel, unknown resampling)."""


class EstimationError(PipelineError):
    """A CATE / RATE estimation cannot run on the given data (too few clusters, constant outcome...)."""


class ArtifactError(PipelineError):
    """An upstream artifact is missing, incomplete or inconsistent with the params."""


class DataWarning(UserWarning):
    """Something in the inputs that a reader of the results must know, though the run goes on (a scale whose
    windows are mostly invalid, clusters that mix arms...). Stages print each as one ``warning [stage]`` line,
    store them in their artifacts, and the report lists them."""


def warn_all(messages: Iterable[str]) -> list[str]:
    """Emit every message as a :class:`DataWarning` (bounded to one line); return them (for the artifacts)."""
    out = [shorten(m, 600) for m in messages]
    for m in out:
        warnings.warn(m, DataWarning, stacklevel=2)
    return out
