"""Open a ``.zip`` upload safely: exactly one data file, no entry that escapes its folder,
no absolute paths, no symlinks, and no zip bomb (checked before anything is expanded)."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import DataFileError

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
MAX_EXPANSION_RATIO = 200  # compressed -> expanded; text compresses ~10x, bombs ~1000x+


def extract_single_data_file(archive: Path, display: str, target_dir: Path, max_bytes: int) -> Path:
    """Extract the one data file of ``archive`` into ``target_dir`` under a name we choose."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataFileError(display, f"not a readable zip archive ({exc})") from None
    with zf:
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
            found = ", ".join(i.filename for i in data) or "none"
            raise DataFileError(display, f"a zip must hold exactly one data file ({', '.join(DATA_SUFFIXES)}); "
                                         f"found {len(data)}: {found}")
        info = data[0]
        if info.file_size > max_bytes:
            raise DataFileError(display, f"{info.filename!r} expands to {info.file_size:,} bytes, over the limit "
                                         f"of {max_bytes:,}")
        if info.compress_size and info.file_size / info.compress_size > MAX_EXPANSION_RATIO:
            raise DataFileError(display, f"{info.filename!r} would expand {info.file_size / info.compress_size:.0f}x "
                                         f"(limit {MAX_EXPANSION_RATIO}x): refusing a possible zip bomb")
        out = target_dir / ("data" + PurePosixPath(info.filename).suffix.lower())
        written = 0
        with zf.open(info) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):  # the header's size can lie: count real bytes
                written += len(chunk)
                if written > max_bytes:
                    raise DataFileError(display, f"{info.filename!r} expands past the limit of {max_bytes:,} bytes")
                dst.write(chunk)
        return out
