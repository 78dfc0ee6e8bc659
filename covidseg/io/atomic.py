"""Atomic file and folder writes: a result is either complete under its final name or absent.

Writers produce their output under a temporary name in the destination folder and rename it into place only
after the write succeeded, so a crash, a full disk or Ctrl-C never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from covidseg.errors import OutputExistsError

# Suffixes that must survive in the temporary name because writers pick the format from them.
_COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz")


def full_suffix(path: str | os.PathLike[str]) -> str:
    """Return the format suffix of ``path``, keeping compound suffixes such as ``.nii.gz`` whole.

    Examples:
        >>> full_suffix("scan.nii.gz")
        '.nii.gz'
        >>> full_suffix("/tmp/mask.NRRD")
        '.nrrd'
    """
    name = Path(path).name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Raise :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is false; return it as a Path."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it or choose another output")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error remove it.

    The temporary name keeps the suffix of ``path`` so format-by-extension writers (nibabel, SimpleITK,
    ``torch.save``) behave the same. ``os.replace`` is atomic on POSIX and Windows within one file system.

    Args:
        path: Final destination.
        overwrite: Replace an existing file at ``path``; without it an existing file is an error.

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(out) as tmp:
        ...     _ = tmp.write_text("done")
        >>> out.read_text()
        'done'
    """
    target = check_writable(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success move it to ``path`` (replacing it if allowed).

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "bundle"
        >>> with atomic_dir(out) as tmp:
        ...     _ = (tmp / "x.txt").write_text("1")
        >>> sorted(p.name for p in out.iterdir())
        ['x.txt']
    """
    target = check_writable(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
