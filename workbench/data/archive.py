"""Open a ``.zip`` upload safely: exactly one data file, no entry that escapes its folder,
no absolute paths, no symlinks, and no zip bomb (checked before anything is expanded): a
central directory of at most :data:`MAX_ENTRIES` entries / :data:`MAX_DIRECTORY_BYTES`
(read from the end record before ``zipfile`` builds an object per entry), an expansion
ratio of at most :data:`MAX_EXPANSION_RATIO`, and real bytes counted while extracting.

A damaged archive (bad CRC, truncated, corrupt data), an encrypted entry or a compression
method Python cannot read is a :class:`DataFileError` naming the archive by its display
name -- never a server path -- and saying what to do.
"""

from __future__ import annotations

import lzma
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import DataFileError

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
MAX_EXPANSION_RATIO = 200  # compressed -> expanded; text compresses ~10x, bombs ~1000x+
MAX_ENTRIES = 10_000  # a data file and its README; each entry becomes a Python object
MAX_DIRECTORY_BYTES = 4 << 20
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
           zipfile.ZIP_LZMA: "lzma"}
READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, NotImplementedError,
               RuntimeError)
DAMAGED = "the archive is damaged or truncated: create the zip again and upload it again"


def extract_single_data_file(archive: Path, display: str, target_dir: Path, max_bytes: int, limits=None) -> Path:
    """Extract the one data file of ``archive`` into ``target_dir`` under a name we choose.
    ``limits`` (a :class:`~workbench.data.limits.DataLimits`) caps the extracted size at its
    decoded-bytes limit too."""
    _check_directory(archive, display)
    try:
        zf = zipfile.ZipFile(archive)
    except READ_ERRORS as exc:
        raise DataFileError(display, f"not a readable zip archive ({_reason(exc)})", hint=DAMAGED) from None
    with zf:
        info = _the_data_entry(zf, display)
        name = info.filename
        if info.flag_bits & 0x1:
            raise DataFileError(display, f"entry {name!r} is encrypted", hint="zip the file again without a password")
        if info.compress_type not in METHODS:
            raise DataFileError(display, f"entry {name!r} uses compression method {info.compress_type}, which cannot "
                                         f"be read (readable: {', '.join(METHODS.values())})",
                                hint="zip the file again with ordinary (deflate) compression")
        cap, variable = max_bytes, "WORKBENCH_MAX_UPLOAD_BYTES"
        if limits is not None and limits.decoded_bytes < max_bytes:
            cap, variable = limits.decoded_bytes, "WORKBENCH_MAX_DECODED_BYTES"
        if info.file_size > cap:
            raise DataFileError(display, f"{name!r} expands to {info.file_size:,} bytes, over the limit of {cap:,} "
                                         f"(limit {variable})", hint=f"split the file, or raise {variable}")
        if info.compress_size and info.file_size / info.compress_size > MAX_EXPANSION_RATIO:
            raise DataFileError(display, f"{name!r} would expand {info.file_size / info.compress_size:.0f}x "
                                         f"(limit {MAX_EXPANSION_RATIO}x): refusing a possible zip bomb")
        out = target_dir / ("data" + PurePosixPath(name).suffix.lower())
        written = 0
        try:
            with zf.open(info) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):  # the header's size can lie: count real bytes
                    written += len(chunk)
                    if written > cap:
                        raise DataFileError(display, f"{name!r} expands past the limit of {cap:,} bytes (limit "
                                                     f"{variable})", hint=f"split the file, or raise {variable}")
                    dst.write(chunk)
        except READ_ERRORS as exc:
            crc = isinstance(exc, zipfile.BadZipFile) and "CRC" in str(exc)
            problem = "is corrupt: its CRC-32 check failed" if crc else f"cannot be extracted ({_reason(exc)})"
            raise DataFileError(display, f"entry {name!r} {problem}", hint=DAMAGED) from None
        return out


def _the_data_entry(zf: zipfile.ZipFile, display: str) -> zipfile.ZipInfo:
    data = []
    for info in zf.infolist():
        name = info.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise DataFileError(display, f"entry {name!r} has an absolute path; refusing the archive")
        if ".." in path.parts:
            raise DataFileError(display, f"entry {name!r} escapes the archive's folder; refusing the archive")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataFileError(display, f"entry {name!r} is a symbolic link; refusing the archive")
        if info.is_dir() or path.name.startswith(".") or "__MACOSX" in path.parts:
            continue
        if path.suffix.lower() in DATA_SUFFIXES:
            data.append(info)
    if len(data) != 1:
        found = ", ".join(i.filename for i in data[:10]) or "none"
        raise DataFileError(display, f"a zip must hold exactly one data file ({', '.join(DATA_SUFFIXES)}); "
                                     f"found {len(data)}: {found}")
    return data[0]


def _check_directory(archive: Path, display: str) -> None:
    """Refuse a central directory of more than MAX_ENTRIES entries or MAX_DIRECTORY_BYTES,
    from the end-of-central-directory record (zip64 too); no record: zipfile says so."""
    with open(archive, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - 22 - 0xFFFF))
        tail = fh.read()
        end = tail.rfind(b"PK\x05\x06")
        if end < 0 or end + 22 > len(tail):
            return
        entries, directory = int.from_bytes(tail[end + 10:end + 12], "little"), int.from_bytes(tail[end + 12:end + 16],
                                                                                            "little")
        if (entries == 0xFFFF or directory == 0xFFFFFFFF) and end >= 20 and tail[end - 20:end - 16] == b"PK\x06\x07":
            fh.seek(int.from_bytes(tail[end - 12:end - 4], "little"))
            record = fh.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                entries, directory = int.from_bytes(record[32:40], "little"), int.from_bytes(record[40:48], "little")
    if entries > MAX_ENTRIES or directory > MAX_DIRECTORY_BYTES:
        raise DataFileError(display, f"the archive lists {entries:,} entries in a {directory:,}-byte directory, more "
                                     f"than {MAX_ENTRIES:,} entries or {MAX_DIRECTORY_BYTES:,} bytes",
                            hint="zip only the data file (and a README)")


def _reason(exc: Exception) -> str:
    """Why ``exc`` happened, without a server path: zipfile's own messages name entries,
    not files; an OSError's text may hold a path, so only its kind is kept."""
    if isinstance(exc, zipfile.BadZipFile) or isinstance(exc, (zlib.error, lzma.LZMAError, EOFError)):
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    return type(exc).__name__
