"""A results folder on disk: its layout, atomic writes, the checks of its shards, its lock.

Layout of ``lvm refine --output DIR``::

    DIR/manifest.json              what was computed, and how (written before any shard);
                                   when the job ends, also the size and SHA-256 of every
                                   shard file and of the summary
    DIR/shards/00000.safetensors   refined posterior parameters of shard 0's datapoints
                                   (its metadata names the job)
    DIR/shards/00000.jsonl         one JSON object per datapoint of shard 0 (the table)
    DIR/shards/00000.receipt.json  the job, the row count, and the size and SHA-256 of the
                                   two files above; renamed last, it marks the shard done
    ...
    DIR/summary.json               means over all datapoints (written when every shard is done)
    DIR/.lvm.lock                  locked (``flock``) by the job that is writing the folder

Every file is written to a temporary file in its folder and renamed over its name when
complete, so a file that exists is whole. A shard file that is shorter than recorded, whose
SHA-256 differs from the recorded one, or that names another job was damaged or put there
after the job wrote it: reading it raises `IntegrityError`, a one-line message naming the
file. The manifest and the receipts carry a checksum of their own content, so a damaged
record is told apart from a damaged shard.

Formats. Tensors: safetensors, readable without this toolkit (``safetensors``, numpy,
PyTorch, JAX) and without running code. Table: JSON lines, which pandas
(``read_json(lines=True)``), polars, DuckDB and ``jq`` read, which needs no dependency,
and which round-trips float32 values exactly (each is written as the shortest decimal of
the double that holds it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lvmtoolkit.errors import LvmError

try:
    import fcntl
except ImportError:  # Windows (not a target): no flock, so jobs there run without the lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "IntegrityError",
    "OutputLock",
    "ResultsFolder",
    "VerifiedShard",
    "atomic_write",
    "json_bytes",
    "write_bytes",
    "write_json",
]

FORMAT_VERSION = 2
"""Version of the folder layout, written into the manifest. Version 2 added the receipts
and checksums; a version-1 folder has none, so `load_results` refuses it and a rerun of
its command recomputes its shards."""

LEGACY_FORMATS = (1,)
"""Formats of earlier versions of this code (no checksums)."""

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
SHARDS = "shards"
LOCK = ".lvm.lock"
_SELF_CHECK = "checksum"
"""Key of a record's checksum of its own content (the manifest's, a receipt's)."""


class IntegrityError(LvmError):
    """A results file that is missing, truncated, altered, or belongs to another job."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
"""The mode of an ordinary new file (mkstemp's temporary files are private)."""


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)``, then rename the temporary file over ``path``."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temp, _FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, atomically."""
    atomic_write(path, lambda temp: Path(temp).write_bytes(data))


def json_bytes(value: Any) -> bytes:
    """``value`` as indented JSON, the bytes `write_json` writes."""
    return (json.dumps(value, indent=2) + "\n").encode()


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""
    write_bytes(path, json_bytes(value))


def file_record(data: bytes) -> dict[str, Any]:
    """What a receipt or the manifest records of a file: its size and SHA-256."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _content_sha256(record: dict[str, Any]) -> str:
    """SHA-256 of a record without its own checksum (key order does not matter)."""
    rest = {k: v for k, v in record.items() if k != _SELF_CHECK}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def with_checksum(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (JSON-able) with a checksum of its content added, as read back from JSON."""
    rest = json.loads(json.dumps({k: v for k, v in record.items() if k != _SELF_CHECK}))
    return {**rest, _SELF_CHECK: _content_sha256(rest)}


def _safetensors_job(data: bytes) -> str | None:
    """The job a safetensors file's metadata names; None when its header does not parse."""
    if len(data) < 8:
        return None
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    job = metadata.get("job") if isinstance(metadata, dict) else None
    return job if isinstance(job, str) else None


def _foreign(path: Path, other: str, job: str, fix: str) -> str:
    return f"{path}: a shard of another job ({other[:12]}), not of this folder's ({job[:12]}){fix}"


def _is_file_record(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("bytes"), int)
        and isinstance(value.get("sha256"), str)
    )


@dataclass
class VerifiedShard:
    """A done shard whose files matched their receipt.

    Attributes:
        receipt: Its receipt (job, shard, rows, and each file's size and SHA-256).
        table: The bytes of its table, as checked.
    """

    receipt: dict[str, Any]
    table: bytes


class ResultsFolder:
    """The files of one results folder (see the module docstring for the layout).

    Args:
        root: The folder (``--output``).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.shards = self.root / SHARDS
        self.manifest_path = self.root / MANIFEST
        self.summary_path = self.root / SUMMARY
        self.lock_path = self.root / LOCK

    def tensors_path(self, shard: int) -> Path:
        return self.shards / f"{shard:05d}.safetensors"

    def table_path(self, shard: int) -> Path:
        return self.shards / f"{shard:05d}.jsonl"

    def receipt_path(self, shard: int) -> Path:
        return self.shards / f"{shard:05d}.receipt.json"

    def _fix(self, shard: int) -> str:
        """How to get rid of a damaged shard: delete it, and the rerun recomputes it."""
        return (
            f"; delete {self.shards / f'{shard:05d}'}.* and run the same command again to "
            "recompute that shard"
        )

    # --- the manifest -------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when the folder has none.

        Raises:
            IntegrityError: Its content does not match its own checksum (only manifests
                of this format carry one; others are refused or upgraded by format).
            LvmError: It is not JSON.
        """
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise LvmError(f"{self.manifest_path} cannot be read: {err}") from None
        if not isinstance(manifest, dict):
            raise LvmError(f"{self.manifest_path} cannot be read: not a JSON object")
        # Only this format's manifests carry the checksum (others are refused by format).
        if manifest.get("format") == FORMAT_VERSION and (
            manifest.get(_SELF_CHECK) != _content_sha256(manifest)
        ):
            raise IntegrityError(
                f"{self.manifest_path}: altered since the job wrote it (its checksum does not "
                "match); rerun the command with --overwrite to recompute the results"
            )
        return manifest

    def shard_records(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        """The manifest's record of every shard (its files' sizes and SHA-256s), checked
        for shape.

        Raises:
            IntegrityError: A shard has no record (the job did not finish writing it).
        """
        num_shards = manifest["job"]["num_shards"]
        records = manifest.get("shards")
        valid = isinstance(records, list) and len(records) == num_shards
        for shard, record in enumerate(records if valid else []):
            names = (self.tensors_path(shard).name, self.table_path(shard).name)
            files = record.get("files") if isinstance(record, dict) else None
            valid = valid and (
                isinstance(files, dict)
                and record.get("shard") == shard
                and all(_is_file_record(files.get(name)) for name in names)
            )
        if not valid:
            raise IntegrityError(
                f"{self.manifest_path}: holds no checksums of the {num_shards} shards; run "
                "the same command again to record them"
            )
        return records

    # --- files and folders --------------------------------------------------------------

    def is_empty(self) -> bool:
        """Whether the folder is missing or holds nothing but a job's lock file."""
        return not self.root.exists() or all(p.name == LOCK for p in self.root.iterdir())

    def ours(self) -> list[Path]:
        """Files this layout owns (what ``--overwrite`` removes; never the lock file)."""
        found = [p for p in (self.manifest_path, self.summary_path) if p.exists()]
        if self.shards.is_dir():
            found += sorted(self.shards.iterdir())
        return found

    def clear(self) -> None:
        """Remove the files of a previous job (nothing else in the folder)."""
        for path in self.ours():
            path.unlink()
        if self.shards.is_dir():
            self.shards.rmdir()

    def remove_temporary(self) -> None:
        """Delete half-written files left by an interrupted run."""
        for folder in (self.root, self.shards):
            if folder.is_dir():
                for path in folder.glob(".*.tmp"):
                    path.unlink(missing_ok=True)

    # --- writing a shard ----------------------------------------------------------------

    def write_shard(
        self,
        shard: int,
        job: str,
        tensors: dict[str, torch.Tensor],
        rows: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Write one shard's tensors, its table, then its receipt (which marks it done).

        The checksums are taken of the bytes in hand, before they are written.

        Returns:
            The receipt.
        """
        from safetensors.torch import save

        self.shards.mkdir(parents=True, exist_ok=True)
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        metadata = {"job": job, "shard": str(shard), "rows": str(len(rows))}
        data = save(cpu, metadata)
        table = "".join(json.dumps(row) + "\n" for row in rows).encode()
        receipt = with_checksum(
            {
                "job": job,
                "shard": shard,
                "rows": len(rows),
                "files": {
                    self.tensors_path(shard).name: file_record(data),
                    self.table_path(shard).name: file_record(table),
                },
            }
        )
        write_bytes(self.tensors_path(shard), data)
        write_bytes(self.table_path(shard), table)
        write_json(self.receipt_path(shard), receipt)
        return receipt

    # --- reading, unchecked (for inspection) --------------------------------------------

    def read_table(self, shard: int) -> list[dict[str, Any]]:
        """Shard ``shard``'s table, as it is on disk (not checked)."""
        with open(self.table_path(shard)) as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def read_tensors(self, shard: int) -> dict[str, torch.Tensor]:
        """Shard ``shard``'s tensors, as they are on disk (not checked)."""
        from safetensors.torch import load_file

        return load_file(str(self.tensors_path(shard)))

    # --- reading, checked ---------------------------------------------------------------

    @staticmethod
    def _read(path: Path, fix: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(
                f"{path}: missing; run the same command again to recompute it"
            ) from None
        except OSError as err:
            raise IntegrityError(f"{path}: cannot be read ({err}){fix}") from None

    def _checked(
        self,
        path: Path,
        record: dict[str, Any],
        job: str,
        where: str,
        fix: str,
        data: bytes | None = None,
    ) -> bytes:
        """The bytes of ``path`` if they are the ones ``record`` (in ``where``) describes
        (``data``: the file's bytes where the caller has read them already)."""
        data = self._read(path, fix) if data is None else data
        if path.suffix == ".safetensors":
            other = _safetensors_job(data)
            if other is not None and other != job:
                raise IntegrityError(_foreign(path, other, job, fix))
        if len(data) < record["bytes"]:
            raise IntegrityError(f"{path}: truncated ({len(data)} of {record['bytes']} bytes){fix}")
        if len(data) != record["bytes"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise IntegrityError(
                f"{path}: altered since the job wrote it (its SHA-256 differs from the one in "
                f"{where}){fix}"
            )
        return data

    def _read_receipt(self, shard: int) -> dict[str, Any]:
        path = self.receipt_path(shard)
        data = self._read(path, self._fix(shard))
        try:
            receipt = json.loads(data)
        except ValueError as err:
            raise IntegrityError(
                f"{path}: not a readable shard receipt ({err}){self._fix(shard)}"
            ) from None
        names = (self.tensors_path(shard).name, self.table_path(shard).name)
        files = receipt.get("files") if isinstance(receipt, dict) else None
        if not (
            isinstance(files, dict)
            and all(_is_file_record(files.get(n)) for n in names)
            and isinstance(receipt.get("job"), str)
            and receipt.get(_SELF_CHECK) == _content_sha256(receipt)
        ):
            raise IntegrityError(
                f"{path}: altered since the job wrote it (its checksum does not match)"
                f"{self._fix(shard)}"
            )
        return receipt

    def verify_shard(self, shard: int, job: str) -> VerifiedShard | None:
        """Shard ``shard`` of the job ``job``, if it is done, with its files checked.

        Returns:
            The shard's receipt and table, or None when it is not done: one of its files
            or its receipt is missing (an interrupted write, or deleted to be recomputed).

        Raises:
            IntegrityError: Its tensors or receipt name another job, a file is shorter
                than its receipt says, or its SHA-256 differs.
        """
        tensors, table = self.tensors_path(shard), self.table_path(shard)
        if not tensors.is_file():
            return None
        fix = self._fix(shard)
        data = self._read(tensors, fix)
        # A shard of another job is refused even before its receipt is written: it is a
        # sign of folders mixed up, not of an interrupted write.
        other = _safetensors_job(data)
        if other is not None and other != job:
            raise IntegrityError(_foreign(tensors, other, job, fix))
        if not (table.is_file() and self.receipt_path(shard).is_file()):
            return None
        receipt = self._read_receipt(shard)
        if receipt["job"] != job:
            raise IntegrityError(_foreign(self.receipt_path(shard), receipt["job"], job, fix))
        where, files = self.receipt_path(shard).name, receipt["files"]
        self._checked(tensors, files[tensors.name], job, where, fix, data)
        return VerifiedShard(receipt, self._checked(table, files[table.name], job, where, fix))

    def shard_done(self, shard: int, job: str) -> bool:
        """Whether shard ``shard`` of the job ``job`` is done and its files check out."""
        try:
            return self.verify_shard(shard, job) is not None
        except IntegrityError:
            return False

    def parse_table(self, shard: int, data: bytes) -> list[dict[str, Any]]:
        """The rows of a shard's table from its (checked) bytes."""
        try:
            return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        except ValueError as err:
            raise IntegrityError(
                f"{self.table_path(shard)}: not JSON lines ({err}){self._fix(shard)}"
            ) from None

    def read_checked_table(
        self, shard: int, record: dict[str, Any], job: str
    ) -> list[dict[str, Any]]:
        """Shard ``shard``'s table, if it is the one the manifest's ``record`` describes."""
        path, fix = self.table_path(shard), self._fix(shard)
        try:
            data = self._checked(path, record["files"][path.name], job, MANIFEST, fix)
        except IntegrityError:
            # The table cannot name its job; the tensors beside it can say the whole
            # shard was copied in from another job (the more useful message).
            other = self._header_job(self.tensors_path(shard))
            if other is not None and other != job:
                raise IntegrityError(_foreign(self.tensors_path(shard), other, job, fix)) from None
            raise
        return self.parse_table(shard, data)

    @staticmethod
    def _header_job(path: Path) -> str | None:
        """The job a safetensors file's header names, reading the header only."""
        try:
            with open(path, "rb") as handle:
                start = handle.read(8)
                if len(start) < 8:
                    return None
                (size,) = struct.unpack("<Q", start)
                return _safetensors_job(start + handle.read(min(size, 1 << 24)))
        except OSError:
            return None

    def read_checked_tensors(
        self, shard: int, record: dict[str, Any], job: str
    ) -> dict[str, torch.Tensor]:
        """Shard ``shard``'s tensors, if they are the ones the manifest's ``record`` describes."""
        from safetensors.torch import load

        path = self.tensors_path(shard)
        data = self._checked(path, record["files"][path.name], job, MANIFEST, self._fix(shard))
        try:
            return load(data)
        except Exception as err:  # checksum matched, so only a writer's bug gets here
            raise IntegrityError(
                f"{path}: not a safetensors file ({err}){self._fix(shard)}"
            ) from None

    def read_checked_summary(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """``summary.json``, if it is the one the manifest records."""
        record = manifest.get("summary")
        if not _is_file_record(record):
            raise IntegrityError(
                f"{self.manifest_path}: holds no checksum of {SUMMARY}; run the same command "
                "again to record it"
            )
        fix = "; delete it and run the same command again to rewrite it"
        data = self._checked(self.summary_path, record, manifest["identity"], MANIFEST, fix)
        try:
            return json.loads(data)
        except ValueError as err:
            raise IntegrityError(f"{self.summary_path}: not JSON ({err}){fix}") from None


# --- the lock -------------------------------------------------------------------------------


class OutputLock:
    """An exclusive ``flock`` on ``DIR/.lvm.lock``, held while a job writes ``DIR``.

    The kernel drops the lock when the process ends, however it ends, so a killed job
    leaves no stale lock: its file stays (naming the dead job) but locks nothing. The
    file is never deleted: a process that still had it open would then hold a lock on a
    file that the next job does not see. While held, the file names its holder (pid and
    host); it is emptied on release.

    Args:
        folder: The results folder (which must exist).
    """

    def __init__(self, folder: ResultsFolder):
        self.folder = folder
        self._fd: int | None = None
        self.supported = fcntl is not None
        """False where the file system (or the OS) has no ``flock``: the job runs unlocked."""

    def acquire(self) -> None:
        """Take the lock, or fail at once.

        Raises:
            LvmError: Another job holds it, or the lock file cannot be created.
        """
        if fcntl is None:
            return
        root, path = self.folder.root, self.folder.lock_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise LvmError(f"--output {root} cannot be written: {err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LvmError(
                    f"--output {root} is in use by another job ({holder}); wait for it to "
                    "finish, or choose another folder"
                ) from None
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                self.supported = False  # e.g. a file system without locks: run unlocked
                return
            raise LvmError(f"--output {root} cannot be locked: {err}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass  # naming the holder is a courtesy; the lock is what counts
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the file drops it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # while still held: a waiting job never reads a stale name
        os.close(fd)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    """Who holds the lock, as the lock file says (``pid N on HOST``)."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace")
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:100] if lines else "pid unknown"
