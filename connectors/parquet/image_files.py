"""Reading path-valued images safely: the rules a Parquet ``image`` cell holding a path must pass.

A Parquet file is untrusted input: its image column may name any path. :func:`read_image_file` reads one only when

1. it is a local path or a ``file://`` URI (``file://localhost/...`` too); other schemes (``s3://``, ``http://``) are
   refused, no remote filesystem being configured (rule ``scheme``);
2. resolved relative to the directory of the Parquet file naming it (``~`` is not expanded), with every symlink
   followed, it lies inside that directory or inside one of ``parquet.image_roots`` (rule ``outside-root``);
3. it is a regular file: no FIFO, socket, device or directory (rule ``not-regular-file``); a FIFO is opened
   non-blocking, so it cannot hang the reader;
4. it holds at most ``decode.max_bytes`` (rule ``too-large``): read with that cap, never to its end.

The file is opened one path component at a time from the root's descriptor, every component with ``O_NOFOLLOW``, so a
component swapped for a symlink between the check and the open fails the open instead of leaving the root.

Refusals raise :class:`~cola_moderation.connectors.errors.MalformedRecordError` whose message names the rule and the
location as given; no byte of a refused file is read, so none can reach a dead letter.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from cola_moderation.connectors.errors import MalformedRecordError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def image_roots(parquet_file: Path, extra: Sequence[str | Path] = ()) -> tuple[Path, ...]:
    """The directories path-valued images of ``parquet_file`` may come from (real paths, symlinks resolved)."""
    return tuple(Path(os.path.realpath(root)) for root in (parquet_file.parent, *extra))


def local_path(location: str, *, where: str) -> str:
    """The local path a cell names: a plain path, or the path of a ``file://`` URI (percent-decoded)."""
    if location.startswith("file:"):
        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            raise MalformedRecordError(f"{where}: image location {location!r} refused (rule scheme): file:// URIs "
                                       f"must name a local file, not host {parsed.netloc!r}")
        return unquote(parsed.path)
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise MalformedRecordError(f"{where}: image location {location!r} refused (rule scheme): only local paths and "
                                   f"file:// URIs are supported; no filesystem is configured for {scheme!r}")
    return location


def read_image_file(location: str, *, base: Path, roots: Sequence[Path], max_bytes: int, where: str) -> bytes:
    """The bytes of the image file ``location`` names (see the module docstring for the rules); ``base`` is the
    directory relative paths start from, ``roots`` the real directories the file must lie in."""
    path = local_path(location, where=where)
    if "\x00" in path or not path:
        raise MalformedRecordError(f"{where}: image location {location!r} refused (rule bad-path): empty or NUL byte")
    real = Path(os.path.realpath(os.path.join(base, path)))
    root = next((r for r in roots if real == r or r in real.parents), None)
    if real == root:
        raise MalformedRecordError(f"{where}: image location {location!r} refused (rule not-regular-file): it is "
                                   "a directory, not a regular file")
    if root is None:
        allowed = ", ".join(str(r) for r in roots)
        raise MalformedRecordError(f"{where}: image location {location!r} refused (rule outside-root): it resolves "
                                   f"outside the Parquet file's directory and parquet.image_roots ({allowed})")
    try:
        fd = _open_below(root, real.relative_to(root).parts)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise MalformedRecordError(f"{where}: image location {location!r} refused (rule outside-root): a path "
                                       "component changed into a symlink while it was opened") from None
        raise MalformedRecordError(f"{where}: cannot read image {location!r}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MalformedRecordError(f"{where}: image location {location!r} refused (rule not-regular-file): it is "
                                       f"a {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise MalformedRecordError(f"{where}: image location {location!r} refused (rule too-large): "
                                       f"{info.st_size} bytes > decode.max_bytes={max_bytes}")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes and (chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # grew after the fstat
            raise MalformedRecordError(f"{where}: image location {location!r} refused (rule too-large): more than "
                                       f"decode.max_bytes={max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise MalformedRecordError(f"{where}: cannot read image {location!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _open_below(root: Path, parts: Sequence[str]) -> int:
    """Open ``root/parts...`` read-only without following any symlink below ``root``."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"
