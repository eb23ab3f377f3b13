"""Read a ``.parquet`` upload within the :class:`~workbench.data.limits.DataLimits`, refusing
a file that expands too far *before* its data is decoded.

A Parquet file is small when its values repeat: a 7 KB file can hold 300,000 copies of one
8.7 KB string (dictionary-encoded, 2.6 GB once decoded). So, in order:

1. the footer: its length, then rows, columns (top level, per struct, leaf columns in all),
   nesting depth and the uncompressed size the column chunks declare -- no data read yet;
2. per row group, a probe: its first :data:`BATCH_ROWS` rows with every text column read
   *as a dictionary* (indices into the distinct values), whose decoded size is summed from
   the dictionary's value lengths without expanding anything; a projection of it to all rows
   far over the limit refuses the file here. The probe also gives the longest dictionary
   value, which sets how many rows a decoded batch may hold (:data:`BATCH_BYTES`);
3. the row group decoded in those batches, each checked (rows, characters per value, decoded
   bytes so far and their projection) before the next is read.

Only the probe reads dictionaries: reading a whole high-cardinality column as a dictionary
costs time quadratic in its rows (pyarrow copies the growing dictionary into each batch).

What stays open: a footer that lies about a page's uncompressed size makes pyarrow allocate
that page while decoding it; rows deep in a list column that point many times at a long
dictionary value expand one batch before the check stops them. The worker's memory cap is
the backstop for those.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataFileError
from .limits import DataLimits

BATCH_ROWS = 8192
BATCH_BYTES = 16 << 20  # what one decoded batch may hold, from the probe's longest values
FOOTER_BYTES_PER_COLUMN = 16 << 10  # a column chunk's metadata is ~200 bytes per row group
PROJECTION_MARGIN = 4  # refuse on a projection only when well past the limit (length-sorted files)


def read_parquet(path: Path, display: str, limits: DataLimits):
    """A ``pyarrow.Table`` of ``path``, or DataFileError naming the file and the limit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_footer_length(path, display, limits)
    try:
        meta_file = pq.ParquetFile(path)
        meta, schema = meta_file.metadata, meta_file.schema_arrow
        _check_metadata(meta, schema, display, limits)
        text_leaves = [meta.schema.column(i).path for i in range(meta.num_columns)
                       if meta.schema.column(i).physical_type == "BYTE_ARRAY"]
        batches = _read_batches(path, meta, text_leaves, display, limits)
        table = pa.Table.from_batches(batches) if batches else None
    except DataFileError:
        raise
    except Exception as exc:  # ArrowInvalid, OSError, ...: a corrupt or foreign file
        detail = str(exc).replace(str(path), display).replace(str(path.parent), "")[:200]
        raise DataFileError(display, f"not a readable Parquet file ({type(exc).__name__}: {detail})",
                            hint="export the file again") from None
    if table is None or table.num_rows == 0:
        raise DataFileError(display, "the Parquet file has no rows")
    return table


def _check_footer_length(path: Path, display: str, limits: DataLimits) -> None:
    """The footer (schema + row-group metadata) is parsed whole by pyarrow: bound it first."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        if size < 12:
            raise DataFileError(display, f"not a readable Parquet file ({size} bytes)", hint="export the file again")
        fh.seek(size - 8)
        tail = fh.read(8)
    footer = int.from_bytes(tail[:4], "little")
    most = FOOTER_BYTES_PER_COLUMN * limits.columns
    if tail[4:] != b"PAR1" or footer + 12 > size:  # 4 + 4 + 4: leading magic, length, trailing magic
        return  # not Parquet, or a footer longer than the file: pyarrow says so
    if footer > most:
        raise limits.refuse(display, "columns", f"has a Parquet footer of {footer:,} bytes, more than {most:,} for "
                                                f"{limits.columns:,} columns: too many columns or row groups")


def _check_metadata(meta, schema, display: str, limits: DataLimits) -> None:
    import pyarrow as pa

    if meta.num_rows > limits.rows:
        raise limits.refuse(display, "rows", f"expands to {meta.num_rows:,} rows, more than {limits.rows:,}")
    if len(schema) > limits.columns:
        raise limits.refuse(display, "columns", f"has {len(schema):,} columns, more than {limits.columns:,}")
    if meta.num_columns > limits.columns:
        raise limits.refuse(display, "columns", f"has {meta.num_columns:,} columns counting nested fields, more "
                                                f"than {limits.columns:,}")
    stack = [(field.type, 2, field.name) for field in schema]  # the row is level 1
    while stack:  # iterative: a hostile schema may nest thousands deep
        kind, level, name = stack.pop()
        if pa.types.is_dictionary(kind):
            stack.append((kind.value_type, level, name))
            continue
        children = _children(kind)
        if children and level > limits.depth:
            raise limits.refuse(display, "depth", f"column {name!r} is nested more than {limits.depth} levels deep")
        if pa.types.is_struct(kind) and kind.num_fields > limits.columns:
            raise limits.refuse(display, "columns", f"column {name!r} has {kind.num_fields:,} fields, more than "
                                                    f"{limits.columns:,}")
        stack.extend((child, level + 1, name) for child in children)
    declared = sum(meta.row_group(g).column(c).total_uncompressed_size
                   for g in range(meta.num_row_groups) for c in range(meta.num_columns))
    if declared > limits.decoded_bytes:
        raise limits.refuse(display, "decoded_bytes", f"declares {declared:,} bytes of uncompressed data, more "
                                                      f"than {limits.decoded_bytes:,}")


def _is(kind, *names: str) -> bool:
    """Whether ``kind`` is any of the ``pyarrow.types.is_<name>`` kinds this pyarrow has."""
    import pyarrow as pa

    return any(getattr(pa.types, f"is_{name}", lambda _: False)(kind) for name in names)


def _children(kind) -> list:
    if _is(kind, "map"):
        return [kind.key_type, kind.item_type]
    if _is(kind, "list", "large_list", "fixed_size_list", "list_view", "large_list_view"):
        return [kind.value_type]
    if _is(kind, "struct", "union"):
        return [kind.field(i).type for i in range(kind.num_fields)]
    return []


def _read_batches(path: Path, meta, text_leaves: list[str], display: str, limits: DataLimits) -> list:
    """Plain record batches of every row group, each checked as soon as it is decoded."""
    import pyarrow.parquet as pq

    plain = pq.ParquetFile(path, metadata=meta)
    probing = pq.ParquetFile(path, metadata=meta, read_dictionary=text_leaves) if text_leaves else None
    batches, rows, decoded = [], 0, 0

    def check(size: int, upto: int, probe: bool) -> None:
        projected = size * max(meta.num_rows, upto) // max(upto, 1)
        if size > limits.decoded_bytes or projected > PROJECTION_MARGIN * limits.decoded_bytes:
            seen = f"{size:,} bytes in its first {upto:,} rows" + (
                f", about {projected:,} bytes for all {meta.num_rows:,} rows" if upto < meta.num_rows else "")
            how = ", counted without decoding" if probe else ""
            raise limits.refuse(display, "decoded_bytes", f"expands to more than {limits.decoded_bytes:,} bytes of "
                                                          f"data once decoded ({seen}{how})")

    for group in range(meta.num_row_groups):
        batch_rows = BATCH_ROWS
        if probing is not None:  # the group's first rows as dictionaries: their decoded size, nothing expanded
            probe = next(probing.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], use_threads=False), None)
            if probe is not None and probe.num_rows:
                check(decoded + sum(decoded_bytes(c) for c in probe.columns), rows + probe.num_rows, True)
                per_row = max(sum(dictionary_bound(c, probe.num_rows) for c in probe.columns),
                              sum(decoded_bytes(c) for c in probe.columns) // probe.num_rows)
                batch_rows = max(1, min(BATCH_ROWS, BATCH_BYTES // max(per_row, 1)))
                del probe
        for batch in plain.iter_batches(batch_size=batch_rows, row_groups=[group], use_threads=False):
            if rows + batch.num_rows > limits.rows:  # the footer said fewer: count what is really there
                raise limits.refuse(display, "rows")
            for name, column in zip(batch.schema.names, batch.columns):
                longest = longest_value(column, limits.field_chars)
                if longest > limits.field_chars:
                    raise limits.refuse(display, "field_chars", f"a value of {longest:,} characters, more than "
                                                                f"{limits.field_chars:,}", column=name,
                                        row=_first_long_row(column, limits.field_chars, rows))
            rows += batch.num_rows
            decoded += sum(decoded_bytes(c) for c in batch.columns)
            check(decoded, rows, False)
            batches.append(batch)
    return batches


def decoded_bytes(array) -> int:
    """Bytes ``array`` takes with its dictionaries expanded -- computed from the dictionary's
    value lengths, never expanding it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        values, indices = array.dictionary, array.indices
        if _is_text(values.type):
            return (pc.sum(pc.take(pc.binary_length(values), indices)).as_py() or 0) + 4 * len(array)
        return len(array) * decoded_bytes(values) // max(len(values), 1)
    if pa.types.is_map(kind):
        return decoded_bytes(array.keys) + decoded_bytes(array.items) + 4 * len(array)
    if isinstance(array, pa.StructArray):
        return sum(decoded_bytes(child) for child in array.flatten()) + len(array) // 8
    if _children(kind):  # list, large list, fixed-size list
        return decoded_bytes(array.flatten()) + 4 * len(array)
    return array.nbytes


def dictionary_bound(array, rows: int) -> int:
    """Bytes per row the dictionary-encoded text under ``array`` can expand to: per
    dictionary, its longest value x the values per row it fills (1 unless inside a list)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        if not _is_text(kind.value_type) or not len(array.dictionary):
            return 0
        longest = pc.max(pc.binary_length(array.dictionary)).as_py() or 0
        return longest * -(-len(array) // max(rows, 1))
    if pa.types.is_map(kind):
        return dictionary_bound(array.keys, rows) + dictionary_bound(array.items, rows)
    if isinstance(array, pa.StructArray):
        return sum(dictionary_bound(child, rows) for child in array.flatten())
    if _children(kind):
        return dictionary_bound(array.flatten(), rows)
    return 0


def longest_value(array, most: int) -> int:
    """The longest text (characters) or binary (bytes) value anywhere in ``array``; exact
    in characters only where the byte length is over ``most`` (a character is >= 1 byte)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):  # a column stored as dictionary: the distinct values it uses
        return longest_value(pc.take(array.dictionary, pc.unique(array.indices.drop_null())), most)
    if pa.types.is_map(kind):
        return max(longest_value(array.keys, most), longest_value(array.items, most))
    if isinstance(array, pa.StructArray):
        return max((longest_value(child, most) for child in array.flatten()), default=0)
    if _children(kind):
        return longest_value(array.flatten(), most)
    if not _is_text(kind) or len(array) == 0:
        return 0
    if _is(kind, "string_view", "binary_view"):
        array = array.cast(pa.large_string() if _is(kind, "string_view") else pa.large_binary())
        kind = array.type
    longest = pc.max(pc.binary_length(array)).as_py() or 0
    if longest > most and _is(kind, "string", "large_string"):
        longest = pc.max(pc.utf8_length(array)).as_py() or 0
    return longest


def _is_text(kind) -> bool:
    return _is(kind, "string", "large_string", "binary", "large_binary", "string_view", "binary_view")


def _first_long_row(column, most: int, before: int) -> int | None:
    """1-based row of the first top-level text value longer than ``most`` (None if nested)."""
    import pyarrow.compute as pc

    if not _is(column.type, "string", "large_string"):
        return None
    over = pc.indices_nonzero(pc.greater(pc.utf8_length(column).fill_null(0), most))
    return before + over[0].as_py() + 1 if len(over) else None
