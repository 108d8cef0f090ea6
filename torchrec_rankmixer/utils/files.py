"""Atomic file writes (a reader sees the old file or the new one, never a partial one),
directory locks and file digests."""

import fcntl
import hashlib
import os
import tempfile
from typing import Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write_with`), flushed and
    fsynced before the rename.

    Example::

        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.txt")
        >>> atomic_write_bytes(p, b"hello"); open(p, "rb").read()
        b'hello'
    """

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_with(path, write)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: PathLike, write: Callable[[str], None]) -> None:
    """Atomically create ``path`` with a writer that takes a file name (``torch.jit.save``,
    ``torch.export.save``, pyarrow): ``write`` fills a fresh temporary file beside ``path``
    whose name ends with ``path``'s (torch checks the suffix), which is then renamed over
    ``path``; on error it is removed and ``path`` is left as it was.

    Example::

        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "m.txt")
        >>> atomic_write_with(p, lambda tmp: open(tmp, "w").write("ok")); open(p).read()
        'ok'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{os.path.basename(path)}", dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(folder: PathLike) -> None:
    """Flush a directory entry (a rename inside it) to disk, where the OS allows it."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DirectoryLock:
    """An exclusive, non-blocking lock on ``<folder>/.lock`` (``fcntl.flock``), held until
    :meth:`release` or process exit, so two processes never write one directory.

    Args:
        folder: the directory to lock (must exist).
        what: how the error names it (e.g. ``"run directory"``).

    Example::

        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> lock = DirectoryLock(d, "export output")
        >>> DirectoryLock(d, "export output")
        Traceback (most recent call last):
        ...
        ValueError: export output '...' is in use by another process (pid ...)
        >>> lock.release()
    """

    FILE = ".lock"

    def __init__(self, folder: PathLike, what: str) -> None:
        path = os.path.join(os.fspath(folder), self.FILE)
        self._fd: Optional[int] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise ValueError(f"{what} {os.fspath(folder)!r} is in use by another process (pid {holder})") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        if getattr(self, "_fd", None) is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes.

    Example::

        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     sha256_file(f.name)[:12]
        'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
