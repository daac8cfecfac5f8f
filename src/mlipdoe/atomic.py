"""Output paths, handled one way everywhere.

* :func:`check_output` refuses, with one :class:`~mlipdoe.exceptions.InputError`, an output
  whose parent folder does not exist (no folder is ever created silently), a file output
  that names a folder, and a folder output that names an existing non-folder.
* :func:`atomic_output` writes one file: a temporary beside the target, renamed over it on
  success, removed on error.
* :func:`atomic_folder` writes a folder of outputs: everything goes into a temporary folder
  beside the target; on success a new target folder is the renamed temporary, an existing one
  receives each file by rename. On error nothing is left behind.

Files get the permissions of the umask like any file ``open`` creates (``mkstemp`` and
``mkdtemp`` make 0600/0700).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .exceptions import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path, *, what: str = "output", folder: bool = False) -> Path:
    """``path`` as a :class:`Path` if it can be written, else :class:`InputError` (one line).

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        How the message names the output (an option name such as ``--record``).
    folder : bool
        The output is a folder (created if missing; an existing folder is written into).
    """
    path = Path(path)
    parent = path.absolute().parent
    if not parent.is_dir():
        raise InputError(f"{what} {path}: output directory does not exist ({parent})")
    if folder:
        if path.exists() and not path.is_dir():
            raise InputError(f"{what} {path} exists and is not a folder")
    elif path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name")
    return path


def output_folder(path, *, what: str = "output folder") -> Path:
    """``path`` as an existing folder: created if missing (its parent must exist), refused if a file."""
    path = check_output(path, what=what, folder=True)
    path.mkdir(exist_ok=True)
    return path


@contextmanager
def atomic_output(path, *, suffix: str = ".tmp", what: str = "output"):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched, so
    readers never see a partial file. A missing folder is refused (:func:`check_output`).
    """
    path = check_output(path, what=what)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.absolute().parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(path, *, what: str = "output folder"):
    """Yield a temporary folder beside ``path``; on success its files land in ``path``.

    A missing ``path`` becomes the renamed temporary folder; an existing folder receives
    each top-level entry by rename (entries of the same name are replaced, other entries
    are kept). On any exception the temporary folder is removed and ``path`` is untouched.
    """
    path = check_output(path, what=what, folder=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.absolute().parent))
    try:
        yield tmp
        mask = _umask()
        for entry in tmp.rglob("*"):
            if entry.is_file() and (entry.stat().st_mode & 0o777) == 0o600:
                os.chmod(entry, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if not path.exists():
            os.replace(tmp, path)
        else:
            for entry in sorted(tmp.iterdir()):
                target = path / entry.name
                if target.is_dir() and not entry.is_dir():
                    raise InputError(f"{what} {path}: {target} is a folder; cannot replace it with a file")
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(entry, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
