"""Where data files come from, and proof that they are the right files.

A dataset is a :class:`FileSet`: the files it needs, each with what identifies it
(:class:`Expected`: a published checksum, the checksum of a copy we verified, or a
structural check), and the places to look. :func:`locate` tries, in order, the data
folder (``$GDL_DATA_DIR``, only read), the cache (``$GDL_CACHE_DIR``), the canonical
online source, and folders that registry packages install. A file is used only once it
passed its verification, wherever it came from; a file that fails is skipped, never
copied, and named in the one :class:`DatasetNotFoundError` raised when no source works.

Every write goes through :func:`atomic_path`: a unique temporary file in the destination
folder, renamed into place only when complete and verified, so a reader never sees a
partial file and several processes filling one cache at once all end with the same,
whole files. A temporary file names its writer (host and process id), so one that a
killed process left behind is removed by the next write to the same place, never one
that a live writer is still filling.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .switches import env_flag

#: Environment variable naming the folder where datasets are looked for first (read
#: only).
DATA_DIR_ENV = "GDL_DATA_DIR"
#: Environment variable naming the writable cache for downloads and unpacked copies.
CACHE_DIR_ENV = "GDL_CACHE_DIR"
#: Set to ``1`` to skip every online step (a machine known to have no network).
OFFLINE_ENV = "GDL_OFFLINE"
#: Default data folder and cache.
DEFAULT_DATA_DIR = Path.home() / ".cache" / "gdl-pytorch"
#: Seconds to wait for a server before moving on to the next source.
TIMEOUT_S = 10.0
#: The most bytes one download may bring: a server that sends more is cut off.
MAX_DOWNLOAD_BYTES = 2 << 30
#: Environment variable naming a server (``http://host:port``) that answers for every
#: online source, at the same paths: a local mirror, or a test server on 127.0.0.1.
MIRROR_ENV = "GDL_MIRROR"
#: A temporary file whose writer cannot be checked (another host) is taken as left
#: behind once it has not changed for this many seconds.
STALE_TEMPORARY_S = 3600.0


class DatasetNotFoundError(FileNotFoundError):
    """No source could provide a dataset; the message lists every place that was tried
    and why."""


class BadFileError(ValueError):
    """A file is there but is not the expected one (damaged, partial, or another file
    altogether)."""


def data_dir() -> Path:
    """The folder searched first: ``$GDL_DATA_DIR``, else ``~/.cache/gdl-pytorch``.
    Never written to."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_DATA_DIR


def _cache_path() -> Path:
    value = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_DATA_DIR


def cache_dir() -> Path:
    """The writable folder for downloads, unpacked copies and checkpoints:
    ``$GDL_CACHE_DIR``, else ``~/.cache/gdl-pytorch``. Kept apart from the data folder,
    which may be shared or read-only.
    """
    folder = _cache_path()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def offline() -> bool:
    """True when ``$GDL_OFFLINE`` asks not to use the network (strictly parsed, see
    ``switches.env_flag``)."""
    return env_flag(OFFLINE_ENV)


def mirrored(url: str) -> str:
    """``url`` with its scheme and host replaced by ``$GDL_MIRROR`` when that is set
    (the path is kept), so a local mirror or a test server stands in for every online
    source; a value that is not exactly ``http(s)://host[:port]`` is an error."""
    value = os.environ.get(MIRROR_ENV, "").strip()
    if not value:
        return url
    mirror = urllib.parse.urlsplit(value)
    try:
        port_ok = mirror.port is None or mirror.port > 0
    except ValueError:
        port_ok = False
    if (
        mirror.scheme not in ("http", "https")
        or not mirror.hostname
        or not port_ok
        or mirror.path not in ("", "/")
        or mirror.query
        or mirror.fragment
        or "@" in mirror.netloc
    ):
        raise ValueError(
            f"{MIRROR_ENV}={value!r} is not a server address; use http://host:port or "
            "https://host (no path), or leave it unset"
        )
    original = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        original._replace(scheme=mirror.scheme, netloc=mirror.netloc)
    )


# --- Checksums and atomic writes ------------------------------------------------------


def _digest(path: Path, algorithm: str, gunzip: bool = False) -> str:
    digest = hashlib.new(algorithm)
    with gzip.open(path, "rb") if gunzip else open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5sum(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    return _digest(path, "md5")


def sha256sum(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    return _digest(path, "sha256")


def _host() -> str:
    return (
        re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def remove_left_temporaries(dest: Path) -> list[Path]:
    """Delete the temporary files of ``dest`` (see :func:`atomic_path`) whose writer is
    gone: a process of this host that no longer runs, or, for a writer that cannot be
    checked, a file unchanged for :data:`STALE_TEMPORARY_S`. Returns what it deleted."""
    dest = Path(dest)
    pattern = re.compile(
        rf"\.{re.escape(dest.name)}\.(?:(\d+)@([A-Za-z0-9-]+)\.)?[^.]+\.tmp"
    )
    removed = []
    try:
        candidates = list(dest.parent.iterdir())
    except OSError:
        return removed
    for path in candidates:
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        pid, host = match.groups()
        try:
            if pid and host == _host():
                stale = not _alive(int(pid))
            else:
                stale = time.time() - path.stat().st_mtime > STALE_TEMPORARY_S
            if stale:
                path.unlink()
                removed.append(path)
        except OSError:  # removed by another process meanwhile, or not ours to remove
            continue
    return removed


class DiskFullError(OSError):
    """A write stopped because the disk that holds its folder is full. The file it was
    to replace is intact, and no temporary file is left."""


#: Free bytes under which a failed write is put down to a full disk: a writer that runs
#: out of space may report it in its own words (``torch.save``: "[enforce fail at
#: inline_container.cc] ... unexpected pos"), not as ``ENOSPC``.
FULL_DISK_BYTES = 1 << 20


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk, so that a rename
    survives a power cut or a reboot. Folders that cannot be opened or synced (some
    platforms and file systems) are skipped."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _disk_full(folder: Path, error: BaseException) -> int | None:
    """The free bytes of ``folder``'s disk when ``error`` looks like a full disk (an
    ``ENOSPC``/``EDQUOT``, or any failure with under :data:`FULL_DISK_BYTES` free),
    else None."""
    if isinstance(error, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return free
    return free if free < FULL_DISK_BYTES else None


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A unique temporary path beside ``dest`` to write to; flushed to the disk and
    renamed to ``dest`` when the block ends without an error (the folder is flushed
    too, so the rename survives a reboot), deleted otherwise. Safe when several
    processes write the same ``dest`` at once. The temporary file's name carries the
    writer's process id and host, so temporaries of killed writers are removed here
    (:func:`remove_left_temporaries`) and never pile up. A write that fails on a full
    disk is one :class:`DiskFullError` that names the folder and the space needed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_left_temporaries(dest)
    handle, name = tempfile.mkstemp(
        dir=dest.parent, prefix=f".{dest.name}.{os.getpid()}@{_host()}.", suffix=".tmp"
    )
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync(dest.parent, directory=True)
    except BaseException as error:
        free = _disk_full(dest.parent, error)
        if free is None:
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        raise DiskFullError(
            errno.ENOSPC,
            f"the disk of {dest.parent} is full ({free:,} bytes free) while writing "
            f"{dest.name} ({written:,} bytes written when it stopped): free some "
            "space and run again; the previous "
            f"{dest.name}, if there was one, is intact",
        ) from error
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dest: Path, payload: bytes) -> Path:
    """Write ``payload`` to ``dest`` through :func:`atomic_path`."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(payload)
    return Path(dest)


# --- What a right file looks like -----------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One file of a dataset and how to tell that a copy is the right one.

    Any of ``md5``/``sha256`` (of the file; ``sha256`` may be a prefix, as in
    torch.hub's file names) or ``gunzip_sha256`` (of a gzip file's content, for copies a
    package re-compressed) must match when given; ``check``, a structural check that
    raises :class:`BadFileError` with a reason, must pass too. ``source`` says where the
    recorded checksum comes from, for error messages. A file larger than ``max_bytes``
    is refused before it is read.
    """

    name: str
    md5: str | None = None
    sha256: str | None = None
    gunzip_sha256: str | None = None
    check: Callable[[Path], None] | None = None
    source: str = "published"
    max_bytes: int | None = None

    def problem(self, path: Path) -> str | None:
        """Why ``path`` is not this file, or None when it passed. Results are remembered
        per file version (size, modification time, inode), so a file is read once per
        process."""
        stat = path.stat()
        key = _version(path, stat, self)
        if key not in _VERIFIED:
            _VERIFIED[key] = self._problem(path, stat.st_size)
        return _VERIFIED[key]

    def verify(self, path: Path) -> Path:
        """``path`` if it is this file, else :class:`BadFileError` naming it, what was
        expected and the fix."""
        reason = self.problem(path)
        if reason:
            raise BadFileError(
                f"{path} is not the expected {self.name}: "
                f"{reason}. Delete or replace it."
            )
        return path

    def _problem(self, path: Path, size: int) -> str | None:
        if size == 0:
            return "the file is empty"
        if self.max_bytes is not None and size > self.max_bytes:
            return f"{size:,} bytes, more than the {self.max_bytes:,} it can have"
        sums = []
        if self.md5:
            sums.append(("MD5", self.md5, lambda: md5sum(path)))
        if self.sha256:
            sums.append(("SHA-256", self.sha256, lambda: sha256sum(path)))
        if self.gunzip_sha256:
            sums.append(
                (
                    "SHA-256 of the unzipped content",
                    self.gunzip_sha256,
                    lambda: _digest(path, "sha256", gunzip=True),
                )
            )
        failures = []
        for label, want, compute in sums:
            try:
                got = compute()
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                failures.append(
                    f"{label} could not be computed ({type(exc).__name__}: {exc})"
                )
                continue
            if got.startswith(want):
                failures = []
                break
            failures.append(
                f"{label} is {got[: len(want)]}, expected {want} ({self.source})"
            )
        if failures:
            return "; ".join(failures)
        if self.check is not None:
            try:
                self.check(path)
            except BadFileError as exc:
                return str(exc)
        return None


_VERIFIED: dict[tuple, str | None] = {}


def _version(path: Path, stat: os.stat_result, expected: Expected) -> tuple:
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, expected)


# --- Downloads ------------------------------------------------------------------------


def download(
    url: str,
    dest: Path,
    expected: Expected | None = None,
    timeout: float | None = None,
) -> Path:
    """Download ``url`` (through ``$GDL_MIRROR`` when set, see :func:`mirrored`) to
    ``dest``: a web page where a file was expected is refused, the received length
    checked against Content-Length and :data:`MAX_DOWNLOAD_BYTES`, and the file against
    ``expected`` before an atomic rename, so ``dest`` is only ever a whole, verified
    copy. ``timeout`` defaults to :data:`TIMEOUT_S` seconds per network operation."""
    url = mirrored(url)
    timeout = TIMEOUT_S if timeout is None else timeout
    request = urllib.request.Request(url, headers={"User-Agent": "gdl-pytorch"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        kind = response.headers.get_content_type()
        if kind == "text/html" and not Path(dest).name.endswith((".html", ".htm")):
            raise BadFileError(
                "it is a web page (the server sent text/html), not the file: a proxy "
                "or captive portal answered"
            )
        if announced is not None and int(announced) > MAX_DOWNLOAD_BYTES:
            raise BadFileError(
                f"the server announces {int(announced):,} bytes, more than the "
                f"{MAX_DOWNLOAD_BYTES:,} a download may bring"
            )
        with atomic_path(
            dest
        ) as tmp:  # the folder is created only once a server has answered
            received = 0
            with open(tmp, "wb") as f:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    received += len(chunk)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise BadFileError(
                            f"the server sent more than the {MAX_DOWNLOAD_BYTES:,} "
                            "bytes a download may bring"
                        )
            if announced is not None and received != int(announced):
                raise OSError(
                    "the download was cut short: "
                    f"{received:,} of {int(announced):,} bytes"
                )
            if expected is not None:
                reason = expected.problem(tmp)
                if reason:
                    raise BadFileError(
                        "the downloaded file is not the "
                        f"expected {expected.name}: {reason}"
                    )
    if expected is not None:  # verified as the temporary file: not read again
        _VERIFIED[_version(dest, dest.stat(), expected)] = None
    return dest


# --- Datasets as sets of files, and where to find them --------------------------------


@dataclass(frozen=True)
class FileSet:
    """Where the files of one dataset can come from.

    ``files`` says what each file must be; ``subdirs`` are the folders inside the data
    folder and the cache to look in (the first is where downloads go); ``mirrors`` are
    base URLs of the canonical online source; ``fetch``, for a source that is not a
    plain download, writes the files into the folder it is given, and ``fetch_from``
    names that source in errors; ``offline`` are folders that registry packages install;
    ``how_to`` tells a reader how to provide the files by hand.
    """

    name: str
    files: tuple[Expected, ...]
    subdirs: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    offline: tuple[Path, ...] = ()
    how_to: str = ""
    fetch: Callable[[Path], None] | None = None
    fetch_from: str = ""

    def problems(self, folder: Path) -> list[str]:
        """What is missing or wrong in ``folder``; empty when every file is there and
        verified."""
        found = []
        for expected in self.files:
            path = folder / expected.name
            if not path.is_file():
                found.append(f"{expected.name} missing")
            else:
                reason = expected.problem(path)
                if reason:
                    found.append(f"{expected.name}: {reason}")
        return found


def _search_roots() -> list[tuple[str, Path]]:
    roots = [("data folder", data_dir()), ("cache", _cache_path())]
    return [
        (label, r)
        for i, (label, r) in enumerate(roots)
        if r not in [p for _, p in roots[:i]]
    ]


Fetcher = Callable[[str, Path, Expected], Path]


def locate(spec: FileSet, fetch: Fetcher = download) -> Path:
    """The folder holding every file of ``spec``, each verified, trying in order:

    1. the data folder (``$GDL_DATA_DIR``), then the cache, in each of ``spec.subdirs``;
    2. the canonical online source, each mirror in turn, then ``spec.fetch`` (skipped
       when ``$GDL_OFFLINE=1``); what they deliver is verified before it enters the
       cache;
    3. folders installed by registry packages (``spec.offline``).

    Raises :class:`DatasetNotFoundError` listing what was tried, what was wrong with
    each file found, and how to provide the files.
    """
    tried: list[str] = []

    def usable(label: str, folder: Path) -> bool:
        if not any((folder / e.name).exists() for e in spec.files):
            tried.append(f"{label}: {folder} (files missing)")
            return False
        problems = spec.problems(folder)
        if problems:
            tried.append(f"{label}: {folder} ({'; '.join(problems)})")
        return not problems

    for label, root in _search_roots():
        for sub in spec.subdirs:
            if usable(label, root / sub):
                return root / sub

    if offline():
        tried.append(f"online: skipped because {OFFLINE_ENV} is set")
    elif spec.mirrors or spec.fetch:
        dest = cache_dir() / spec.subdirs[0]
        for mirror in spec.mirrors:
            try:
                for expected in spec.files:
                    if not (dest / expected.name).is_file() or expected.problem(
                        dest / expected.name
                    ):
                        fetch(
                            mirror.rstrip("/") + "/" + expected.name,
                            dest / expected.name,
                            expected,
                        )
                        expected.verify(dest / expected.name)
                return dest
            except Exception as exc:  # noqa: BLE001 -- any failure means: try the next source
                tried.append(f"online: {mirror} ({type(exc).__name__}: {exc})")
        if spec.fetch is not None:
            try:
                spec.fetch(dest)
                problems = spec.problems(dest)
                if problems:
                    raise BadFileError(
                        "it did not write the expected files: " + "; ".join(problems)
                    )
                return dest
            except Exception as exc:  # noqa: BLE001 -- any failure means: try the next source
                tried.append(f"online: {spec.fetch_from} ({type(exc).__name__}: {exc})")

    for folder in spec.offline:
        if folder.is_dir():
            if usable("offline package folder", folder):
                return folder
        else:
            tried.append(f"offline package folder: {folder} (not installed)")

    needed = ", ".join(e.name for e in spec.files)
    lines = "\n  - ".join(tried)
    raise DatasetNotFoundError(
        f"Could not find {spec.name}. Tried, in order:\n  - {lines}\n"
        f"To provide it, put {needed} into {data_dir() / spec.subdirs[0]} "
        f"(or set {DATA_DIR_ENV} to a folder that has them)."
        + (f" {spec.how_to}" if spec.how_to else "")
    )
