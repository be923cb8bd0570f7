"""Local paths and ``pyarrow.fs`` URIs (``s3://bucket/key``, ``gs://bucket/key``, ``file:///path``) for the Parquet
source and sink.

A :class:`Location` is a filesystem plus a path on it, and the text users see (``uri``: the absolute local path, or
the URI as given). S3 credentials, region and endpoint come from the usual places pyarrow reads (environment
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION``, ``~/.aws``), or from URI query options
such as ``s3://bucket/out?endpoint_override=http://127.0.0.1:9000&region=us-east-1`` (pyarrow's own syntax).
"""

from __future__ import annotations

import fnmatch
import glob
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

from cola_moderation.operators.errors import ConfigError


def is_uri(text: str | Path) -> bool:
    """Whether ``text`` names a non-local filesystem (``scheme://...`` other than ``file://``)."""
    value = str(text)
    return "://" in value and not value.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A file or directory: ``filesystem`` + ``path`` on it; ``uri`` is how it is shown and recorded."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def stem(self) -> str:
        name = self.name
        return name.rsplit(".", 1)[0] if "." in name else name

    def child(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = posixpath.join(self.uri, *parts) if not self.local else str(Path(self.uri, *parts))
        return Location(self.filesystem, path, uri)

    def parent_dir(self) -> Path:
        """The local directory holding this file (for paths relative to it); local files only."""
        return Path(self.path).parent

    def exists(self) -> bool:
        return self.filesystem.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.filesystem.get_file_info(self.path).type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.filesystem.get_file_info(self.path).type == pafs.FileType.File

    def __str__(self) -> str:
        return self.uri


def location(text: str | Path) -> Location:
    """The :class:`Location` of a local path, ``file://`` URI or ``pyarrow.fs`` URI."""
    value = str(text)
    if value.startswith("file://"):
        value = unquote(urlparse(value).path)
    if not is_uri(value):
        path = str(Path(value).expanduser().resolve())
        return Location(pafs.LocalFileSystem(), path, path)
    try:
        filesystem, path = pafs.FileSystem.from_uri(value)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"{value!r}: not a usable filesystem URI: {exc}") from exc
    return Location(filesystem, path.rstrip("/"), value.split("?", 1)[0].rstrip("/"))


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def expand(inputs: str | Path | Location | Sequence[str | Path | Location]) -> list[Location]:
    """Resolve files, directories (``*.parquet`` below them, hidden / underscore names skipped) and globs (``**``
    allowed; in URIs too) to a sorted, de-duplicated list of Parquet files."""
    items = [inputs] if isinstance(inputs, (str, Path, Location)) else list(inputs)
    found: dict[str, Location] = {}
    for item in items:
        if isinstance(item, Location):
            found[item.uri] = item
            continue
        text = str(item)
        matches = _expand_uri(text) if is_uri(text) else _expand_local(text)
        if not matches:
            raise ConfigError(f"input {text!r} matches no Parquet files")
        for match in matches:
            found[match.uri] = match
    return [found[uri] for uri in sorted(found)]


def _expand_local(text: str) -> list[Location]:
    if any(char in text for char in "*?["):
        return [location(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
    path = Path(unquote(urlparse(text).path) if text.startswith("file://") else text)
    if path.is_dir():
        return [location(p) for p in path.rglob("*.parquet")
                if p.is_file() and not _hidden(p.relative_to(path).as_posix())]
    if path.is_file():
        return [location(path)]
    raise ConfigError(f"input {text!r}: no such file or directory")


def _expand_uri(text: str) -> list[Location]:
    pattern = text.split("?", 1)[0]
    wildcard = next((i for i, char in enumerate(pattern) if char in "*?["), None)
    if wildcard is None:
        base = location(text)
        info = base.filesystem.get_file_info(base.path)
        if info.type == pafs.FileType.File:
            return [base]
        if info.type != pafs.FileType.Directory:
            raise ConfigError(f"input {text!r}: no such file or directory")
        return [base.child(posixpath.relpath(f.path, base.path))
                for f in base.filesystem.get_file_info(pafs.FileSelector(base.path, recursive=True))
                if f.type == pafs.FileType.File and f.path.endswith(".parquet")
                and not _hidden(posixpath.relpath(f.path, base.path))]
    prefix = pattern[: pattern.rfind("/", 0, wildcard)]
    query = text[len(pattern):]
    base = location(prefix + query)
    rest = pattern[len(prefix) + 1 :]
    selector = pafs.FileSelector(base.path, recursive=True, allow_not_found=True)
    return [base.child(relative) for relative in
            (posixpath.relpath(f.path, base.path) for f in base.filesystem.get_file_info(selector)
             if f.type == pafs.FileType.File)
            if fnmatch.fnmatchcase(relative, rest) or fnmatch.fnmatchcase(relative, rest.replace("**/", ""))]
