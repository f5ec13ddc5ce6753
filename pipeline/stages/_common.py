"""Shared command-line plumbing of the stage entry points."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from models.errors import EncoderError

from ..core.config import Config, load_config
from ..core.errors import DataWarning, PipelineError

USER_ERRORS = (PipelineError, EncoderError)


def guarded(name: str, debug: bool, func, *args) -> int:
    """Run ``func(*args)``; on bad input print one line naming it and return 2 (re-raise with ``debug``).

    Data warnings (:class:`pipeline.core.errors.DataWarning`) are printed as one ``warning [name]`` line each,
    a message repeated (e.g. once per fold and scale set) only the first time.
    """
    import warnings

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            if str(message) not in shown:
                shown.add(str(message))
                logging.getLogger(f"pipeline.stages.{name}").warning(f"warning [{name}] {message}")
        else:
            default_show(message, category, filename, lineno, file, line)

    default_show = warnings.showwarning
    warnings.showwarning = show
    try:
        func(*args)
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error [{name}] {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # e.g. an unreadable file met before our own checks
        if debug:
            raise
        print(f"error [{name}] {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = default_show
    return 0


def run_stage(name: str, description: str, body: Callable[[Config, argparse.Namespace], None],
              add_args: Callable[[argparse.ArgumentParser], None] | None = None, argv=None) -> int:
    """Parse ``--params`` (and stage options), load the validated config and run ``body``.

    Bad input exits with status 2 and a single line naming the input, unless ``--debug`` is given.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{name}", description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--out", default="out", help="study output folder (default: out)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    return guarded(name, args.debug, lambda: body(load_config(args.params), args))
