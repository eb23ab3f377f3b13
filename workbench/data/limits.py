"""How far an uploaded data file may expand while it is read: rows, decoded bytes, columns
(keys per object), characters per field and nesting depth. The readers in ``files.py``
enforce these *while* reading (metadata first, then in batches or lines), so a small file
that claims to decode to gigabytes is refused before the gigabytes exist.

Defaults, for a 24 GiB machine that runs the web server and a training worker side by side
(each reads the file with the same reader):

- ``decoded_bytes`` = 128 MiB (``WORKBENCH_MAX_DECODED_BYTES``). The text the file holds
  once decoded (for text formats: the file's size; for Parquet: the Arrow buffers of every
  column with dictionaries expanded). Inspection multiplies it: Python objects of the rows,
  ``datasets.Dataset``, rendered chat text and token id lists. Measured with
  ``bench/data_speed.py``'s alpaca rows: 16 MB of JSONL raised the peak RSS of ``inspect``
  by 0.9 GB, 33 MB by 1.7 GB (~50-55x). 128 MiB is then ~7 GB in the server and as much
  again in the worker: both fit with room for the model and the OS. 128 MiB is ~400,000
  alpaca rows, several minutes of tokenizing on two cores.
- ``rows`` = 2,000,000 (``WORKBENCH_MAX_ROWS``): far above what LoRA fine-tuning datasets
  hold (Alpaca 52k, OpenHermes 1M) and what can be tokenized in minutes on a CPU; it stops
  a file of millions of tiny rows (each a Python dict of ~200 bytes) early.
- ``columns`` = 1,000 (``WORKBENCH_MAX_COLUMNS``): keys of any JSON object, CSV/TSV header
  width, Parquet fields (top level, of any struct, and leaf columns in all). Datasets
  have a handful of columns; ``datasets`` spends seconds per thousand columns.
- ``field_chars`` = 4,000,000 (``WORKBENCH_MAX_FIELD_CHARS``): one string value; ~1M
  tokens, far beyond any context length a run can train on.
- ``depth`` = 64 (``WORKBENCH_MAX_DEPTH``): nesting of arrays/objects, the outermost
  counted (a JSONL chat row is 3 deep: object, messages list, message). Python's parsers
  recurse and stop near 1,000; pyarrow's type inference recurses too.

A value that is not a positive whole number falls back to the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

from ..errors import DataFileError

ENV_NAMES = {"rows": "WORKBENCH_MAX_ROWS", "decoded_bytes": "WORKBENCH_MAX_DECODED_BYTES",
             "columns": "WORKBENCH_MAX_COLUMNS", "field_chars": "WORKBENCH_MAX_FIELD_CHARS",
             "depth": "WORKBENCH_MAX_DEPTH"}
UNITS = {"rows": "rows", "decoded_bytes": "bytes of data", "columns": "columns",
         "field_chars": "characters", "depth": "levels"}


@dataclass(frozen=True)
class DataLimits:
    """What one data file may expand to; each field is read from its environment variable."""

    rows: int = 2_000_000
    decoded_bytes: int = 128 << 20
    columns: int = 1_000
    field_chars: int = 4_000_000
    depth: int = 64

    def refuse(self, display: str, what: str, problem: str | None = None, *, line: int | None = None,
               row: int | None = None, column: str | None = None) -> DataFileError:
        """The error for ``display`` going past limit ``what``: names the file, the limit and
        its variable. ``problem`` replaces the default "expands to more than N <unit>"."""
        limit, env = getattr(self, what), ENV_NAMES[what]
        text = problem or f"expands to more than {limit:,} {UNITS[what]}"
        return DataFileError(display, f"{text} (limit {env})", line=line, row=row, column=column,
                             hint=f"split or trim the file, or raise the limit by setting {env} (now {limit:,})")


def data_limits(environ: Mapping[str, str] | None = None) -> DataLimits:
    """The limits in force: each ``WORKBENCH_MAX_*`` variable that holds a positive whole
    number (``_`` separators allowed), else the default."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(DataLimits):
        raw = (environ.get(ENV_NAMES[f.name]) or "").strip().replace("_", "")
        if raw.isascii() and raw.isdigit() and int(raw) > 0:
            values[f.name] = int(raw)
    return DataLimits(**values)
