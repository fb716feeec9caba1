"""Where an archive lives: a local folder, or an fsspec URL with its storage options.

Every opener of an archive (:mod:`specufex_dask.io.archive`, the model group, the
transform's status, the lease, xarray) goes through :class:`ArchiveLocation`:
:meth:`ArchiveLocation.open_store` gives Zarr's ``LocalStore`` for a folder (a
``file://`` URL is a folder too, so both keep the direct chunk reader of
:mod:`specufex_dask.io.chunkread`) and an ``FsspecStore`` for any other URL (``s3://``,
``gs://``, ``memory://``...), read and written through Zarr.

A location is what workers get: it is small and picklable, and each worker opens the
store where it runs, with the storage options it carries. ``str(location)`` is the URL
alone and its ``repr`` masks every secret, so messages, logs and task names never show
credentials.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, cast

__all__ = [
    "ArchiveLocation",
    "ArchivePath",
    "as_location",
    "is_local",
    "mask_options",
    "parse_storage_option",
    "store_or_path",
    "zarr_array",
    "zarr_group",
]

SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session", "auth")
"""A storage option whose name holds one of these is shown as ``***``."""
MASK = "***"


def is_local(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder of this machine: no URL scheme, or ``file://``."""
    text = os.fspath(path)
    return "://" not in text or text.startswith("file://")


def _local_path(text: str) -> str:
    """The absolute folder of a path or ``file://`` URL (workers may run elsewhere)."""
    if text.startswith("file://"):
        text = text[len("file://") :]
    return os.path.abspath(os.path.expanduser(text))


def mask_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the value of every secret-looking key (nested ones too) masked.

    Examples
    --------
    >>> mask_options({"key": "AKIA", "client_kwargs": {"region_name": "x"}})
    {'key': '***', 'client_kwargs': {'region_name': 'x'}}
    """
    masked: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, Mapping):
            masked[name] = mask_options(value)
        elif any(word in str(name).lower() for word in SECRET_WORDS):
            masked[name] = MASK
        else:
            masked[name] = value
    return masked


def parse_storage_option(text: str) -> tuple[str, Any]:
    """``key=value`` of the command line: the value as JSON when it parses, else the text.

    Raises
    ------
    ValueError
        Without ``=`` or with an empty key.

    Examples
    --------
    >>> parse_storage_option("anon=true"), parse_storage_option("endpoint_url=http://h:9")
    (('anon', True), ('endpoint_url', 'http://h:9'))
    """
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise ValueError(f"storage option {text!r}: expected key=value")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


@dataclass(frozen=True)
class ArchiveLocation:
    """An archive's place: a local folder or an fsspec URL, and the storage options.

    Attributes
    ----------
    url : str
        The absolute folder of a local archive (``file://`` removed), else the URL.
    storage_options : mapping
        Keywords of the fsspec file system (``endpoint_url``, ``key``, ``secret``,
        ``anon``...); empty for local archives.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if is_local(self.url):
            object.__setattr__(self, "url", _local_path(self.url))
            if self.storage_options:
                raise ValueError(
                    f"{self.url}: storage_options are only for URLs (s3://, gs://, "
                    "memory://...), not for local paths"
                )
        else:
            object.__setattr__(self, "url", self.url.rstrip("/"))
        object.__setattr__(self, "storage_options", dict(self.storage_options))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        if not self.storage_options:
            return f"ArchiveLocation({self.url!r})"
        masked = mask_options(self.storage_options)
        return f"ArchiveLocation({self.url!r}, storage_options={masked!r})"

    def __hash__(self) -> int:
        return hash((self.url, json.dumps(self.storage_options, sort_keys=True, default=str)))

    @property
    def local(self) -> bool:
        """Whether the archive is a folder of this machine."""
        return is_local(self.url)

    @property
    def path(self) -> Path:
        """The local folder (only for local archives)."""
        if not self.local:
            raise ValueError(f"{self.url} is not a local path")
        return Path(self.url)

    @property
    def name(self) -> str:
        """The last part of the path (``x.zarr`` of ``s3://bucket/x.zarr``)."""
        return posixpath.basename(self.url) if not self.local else self.path.name

    @property
    def bucket(self) -> str:
        """The first part after the scheme (the bucket of ``s3://`` and ``gs://``)."""
        return self.url.partition("://")[2].partition("/")[0]

    def child(self, name: str) -> ArchiveLocation:
        """The location ``name`` inside this one."""
        joined = os.path.join(self.url, name) if self.local else f"{self.url}/{name}"
        return ArchiveLocation(joined, self.storage_options)

    def sibling(self, name: str) -> ArchiveLocation:
        """The location ``name`` beside this one (in the same folder or prefix)."""
        if self.local:
            return ArchiveLocation(str(self.path.with_name(name)))
        parent = self.url.rpartition("/")[0]
        return ArchiveLocation(f"{parent}/{name}", self.storage_options)

    def open_store(self, mode: str = "r") -> Any:
        """A Zarr store of the archive: a ``LocalStore`` of the folder, else an
        ``FsspecStore`` of the URL; read-only for ``mode="r"``."""
        from zarr.storage import FsspecStore, LocalStore

        read_only = mode == "r"
        if self.local:
            return LocalStore(self.url, read_only=read_only)
        return FsspecStore.from_url(
            self.url, storage_options=dict(self.storage_options), read_only=read_only
        )

    def filesystem(self) -> tuple[Any, str]:
        """The (synchronous) fsspec file system and the archive's path in it."""
        from fsspec.core import url_to_fs  # type: ignore[import-untyped]

        return url_to_fs(self.url, **self.storage_options)

    def exists(self) -> bool:
        """Whether anything is stored at the location: at a URL, a Zarr group's metadata
        object (one HEAD request, where a prefix would need a listing)."""
        if self.local:
            return self.path.exists()
        fs, root = self.filesystem()
        return any(fs.exists(f"{root}/{name}") for name in ("zarr.json", ".zgroup"))

    def remove(self) -> None:
        """Delete everything stored at the location (nothing there is fine)."""
        if self.local:
            import shutil

            shutil.rmtree(self.url, ignore_errors=True)
            return
        fs, root = self.filesystem()
        try:
            fs.rm(root, recursive=True)
        except FileNotFoundError:
            pass


ArchivePath = Union[str, "os.PathLike[str]", ArchiveLocation]
"""What the functions taking an archive accept: a path, a URL or a location."""


def as_location(
    archive: ArchivePath, storage_options: Mapping[str, Any] | None = None
) -> ArchiveLocation:
    """The :class:`ArchiveLocation` of a path, URL or location (given options replace
    a location's own)."""
    if isinstance(archive, ArchiveLocation):
        if storage_options is None:
            return archive
        return ArchiveLocation(archive.url, storage_options)
    return ArchiveLocation(os.fspath(archive), storage_options or {})


def store_or_path(archive: ArchivePath) -> str | ArchiveLocation:
    """A local archive's absolute path as a str, else its location: what the openers
    and the tasks are given (local paths stay plain strings, as before)."""
    location = as_location(archive)
    return location.url if location.local else location


def zarr_group(archive: ArchivePath, mode: str = "r", path: str = "") -> Any:
    """The Zarr group of ``archive`` (or its member ``path``), from its own metadata
    (never from consolidated copies), opened where this runs."""
    import zarr

    store = as_location(archive).open_store(mode)
    access = cast(Literal["r", "r+", "a", "w", "w-"], mode)
    return zarr.open_group(store=store, path=path, mode=access, use_consolidated=False)


def zarr_array(archive: ArchivePath, name: str, mode: str = "r") -> Any:
    """The Zarr array ``name`` of ``archive``, opened where this runs."""
    import zarr

    return zarr.open_array(store=as_location(archive).open_store(mode), path=name, mode=mode)
