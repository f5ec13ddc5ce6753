"""Atomic artifact writing: a temporary file in the same folder, then ``os.replace``.

A stage killed mid-write leaves at most a ``.tmp-*`` file, never a file under the final name that looks
complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ArtifactError


def missing_reason(path: str | os.PathLike, want: str = "file") -> str:
    """Why ``path`` cannot be used as a ``want`` ('file' or 'folder'): 'no such file', 'a symbolic link that
    leads nowhere (broken, or a loop)', 'a folder, not a file', ... (for the 'got' part of an error)."""
    p = Path(path)
    try:
        if p.is_symlink() and not p.exists():
            return "a symbolic link that leads nowhere (broken, or a loop of links)"
        if want == "file" and p.is_dir():
            return "a folder, not a file"
        if want == "folder" and p.exists() and not p.is_dir():
            return "a file, not a folder"
    except OSError as exc:  # e.g. ELOOP or EACCES on a parent
        return f"an unreachable path ({exc.strerror or exc})"
    return f"no such {want}"


def writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) if needed and check it can be written.

    Raises:
        ArtifactError: naming the folder, when it cannot be created or written (read-only, no permission).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(str(folder), "a folder the pipeline can create", f"{exc.strerror or exc}",
                            "choose another folder or fix its permissions") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ArtifactError(str(folder), "a writable folder", "a read-only folder",
                            "make it writable (chmod u+w) or choose another folder") from None
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Raises:
        ArtifactError: when the folder of ``path`` cannot be created or written.
    """
    path = Path(path)
    writable_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    except OSError as exc:
        raise ArtifactError(str(path), "a file the pipeline can write", f"{exc.strerror or exc}",
                            "make the folder writable or free some disk space") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600 files: give the final file the usual permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(str(path), "an array written by an earlier stage", "no such file",
                            "run the upstream stage first (dvc repro)")
    return np.load(path, allow_pickle=False)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def require(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        got = missing_reason(path, "file")
        raise ArtifactError(str(path), what, "no such file or folder" if got.startswith("no such") else got,
                            "run the upstream stage first (dvc repro)")
    return path


def chip_codec():
    """The chip store's compressor: Blosc LZ4 with byte shuffle (decodes at memory speed, so that reading
    chips hides behind the encoder)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
