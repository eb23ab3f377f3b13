"""Small files that expand: does data inspection refuse them quickly, in little memory, with
a message that names the file and the limit?

Each hostile file (a 7 KB Parquet file of 300,000 copies of one 8.7 KB dictionary-encoded
value, a 100,000-column CSV, a 200,000-key JSONL object, 1,000 MB of NUL bytes, JSON nested
100,000 deep as .json, .jsonl and inside a .zip, 5,000-digit integers, a 100,000-column
and a 3,000,000-row Parquet file, and damaged zips: bad CRC, encrypted, compression method
99, data cut short) is inspected in a fresh subprocess by the code path of the Data tab's
``/inspect`` (``workbench.data.inspect`` with the ``tiny`` tokenizer and the upload's name
as display name). Measured: wall time of the call and peak RSS growth during it (VmHWM reset
before the call; ``datasets`` and ``pyarrow.parquet``, which a running server has loaded
after its first inspection, imported before it). Target: the Parquet file refused in < 1 s with < 100 MB RSS growth.
Writes bench/results/expansion.{json,md}.

    python bench/expansion.py [--nul-mb 1000] [--timeout 180] [--only parquet_dictionary,...]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _meta import markdown_header, run_metadata  # noqa: E402  (also: the checkout importable, hub offline)

RESULTS = HERE / "results"
TARGET = {"seconds": 1.0, "rss_mb": 100.0}


def parquet_dictionary(path: Path) -> None:
    """300,000 rows of one ~8.7 KB value: Parquet stores it once (dictionary) -> ~7 KB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    value = "".join(rng.choice("abcdefgh") for _ in range(7_100)) + "x" * 1_600
    pq.write_table(pa.table({"text": pa.array([value] * 300_000)}), path)


def parquet_wide(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({f"c{i}": pa.array([i % 100], pa.int8()) for i in range(100_000)}), path)


def parquet_rows(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array(["same"] * 3_000_000)}), path)


def csv_wide(path: Path) -> None:
    path.write_text(",".join(f"c{i}" for i in range(100_000)) + "\n" + ",".join("x" * 100_000) + "\n")


def jsonl_keys(path: Path) -> None:
    path.write_text(json.dumps({f"k{i}": i for i in range(200_000)}) + "\n")


def nul_bytes(path: Path, megabytes: int = 1000) -> None:
    with open(path, "wb") as fh:  # sparse: reads back as NUL bytes
        fh.truncate(megabytes * 1_000_000)


def json_deep(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


def jsonl_deep(path: Path) -> None:
    path.write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")


def zip_deep(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("deep.json", "[" * 100_000 + "]" * 100_000)


def json_bigint(path: Path) -> None:
    path.write_text('[{"question": "big?", "answer": ' + "7" * 5_000 + "}]")


def jsonl_bigint(path: Path) -> None:
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "big?", "answer": ' + "7" * 5_000 + "}\n")


def _small_zip(path: Path) -> None:
    rows = "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(200))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.jsonl", rows)


def _patched_zip(path: Path, at_local: int, at_central: int, value: bytes) -> None:
    """A one-entry zip whose local and central headers get ``value`` at the given offsets."""
    _small_zip(path)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[at_local:at_local + len(value)] = value
    raw[central + at_central:central + at_central + len(value)] = value
    path.write_bytes(bytes(raw))


def zip_bad_crc(path: Path) -> None:
    _patched_zip(path, 14, 16, b"\xde\xad\xbe\xef")


def zip_encrypted(path: Path) -> None:
    _patched_zip(path, 6, 8, b"\x01\x00")


def zip_method99(path: Path) -> None:
    _patched_zip(path, 8, 10, (99).to_bytes(2, "little"))


def zip_truncated(path: Path) -> None:
    """The entry's compressed data cut in half; the central directory kept."""
    _small_zip(path)
    raw = path.read_bytes()
    central = raw.rfind(b"PK\x01\x02")
    path.write_bytes(raw[: central // 2] + raw[central:])


# name: (file name, generator, substrings the refusal must hold)
CASES = {
    "parquet_dictionary": ("orders.parquet", parquet_dictionary, ["orders.parquet", "WORKBENCH_MAX_DECODED_BYTES"]),
    "parquet_wide": ("wide.parquet", parquet_wide, ["wide.parquet", "WORKBENCH_MAX_COLUMNS"]),
    "parquet_rows": ("rows.parquet", parquet_rows, ["rows.parquet", "WORKBENCH_MAX_ROWS"]),
    "csv_wide": ("wide.csv", csv_wide, ["wide.csv", "100,000 columns", "WORKBENCH_MAX_COLUMNS"]),
    "jsonl_keys": ("keys.jsonl", jsonl_keys, ["keys.jsonl line 1", "200,000 keys", "WORKBENCH_MAX_COLUMNS"]),
    "nul_bytes": ("zeros.jsonl", nul_bytes, ["zeros.jsonl", "binary content"]),
    "json_deep": ("deep.json", json_deep, ["deep.json line 1", "WORKBENCH_MAX_DEPTH"]),
    "jsonl_deep": ("deep.jsonl", jsonl_deep, ["deep.jsonl line 1", "WORKBENCH_MAX_DEPTH"]),
    "zip_deep": ("deep.zip", zip_deep, ["deep.zip", "WORKBENCH_MAX_DEPTH"]),
    "json_bigint": ("big.json", json_bigint, ["big.json line 1", "more than 4300 digits"]),
    "jsonl_bigint": ("big.jsonl", jsonl_bigint, ["big.jsonl line 2", "more than 4300 digits"]),
    "zip_bad_crc": ("badcrc.zip", zip_bad_crc, ["badcrc.zip", "CRC-32"]),
    "zip_encrypted": ("locked.zip", zip_encrypted, ["locked.zip", "encrypted"]),
    "zip_method99": ("aes.zip", zip_method99, ["aes.zip", "compression method 99"]),
    "zip_truncated": ("cut.zip", zip_truncated, ["cut.zip", "entry 'data.jsonl' cannot be extracted"]),
}


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(path: str) -> int:
    """Inspect ``path`` as /inspect does; print one JSON line of what happened."""
    from workbench.data import inspect, load_tokenizer
    from workbench.errors import WorkbenchError

    tokenizer = load_tokenizer("tiny")
    import datasets  # noqa: F401  a running server has these loaded after its first inspection
    import pyarrow.parquet  # noqa: F401

    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pass
    before = _rss_now()
    start = time.perf_counter()
    outcome = {"refused": False, "message": "", "error": None}
    try:
        report = inspect(path, tokenizer=tokenizer, display=Path(path).name)
        outcome["message"] = f"accepted: {report.rows} rows"
    except WorkbenchError as exc:
        outcome.update(refused=True, message=str(exc))
    except BaseException as exc:  # what the finding was: an unhandled, generic error
        outcome.update(error=type(exc).__name__, message=f"{type(exc).__name__}: {str(exc)[:300]}")
    outcome["seconds"] = time.perf_counter() - start
    outcome["rss_growth_bytes"] = max(0, _rss_peak() - before)
    print(json.dumps(outcome))
    return 0


def run_case(name: str, folder: Path, timeout: float, nul_mb: int) -> dict:
    file_name, generate, expected = CASES[name]
    path = folder / file_name
    generate(path, nul_mb) if generate is nul_bytes else generate(path)
    row = {"case": name, "file": file_name, "file_bytes": path.stat().st_size}
    try:
        out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                             timeout=timeout)
        result = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {
            "refused": False, "message": f"exit {out.returncode}: {out.stderr.strip()[-300:]}", "seconds": None,
            "rss_growth_bytes": None}
    except subprocess.TimeoutExpired:
        result = {"refused": False, "message": f"timed out after {timeout:.0f} s", "seconds": None,
                  "rss_growth_bytes": None}
    path.unlink()
    message = result["message"]
    row.update(seconds=None if result["seconds"] is None else round(result["seconds"], 3),
               rss_growth_mb=None if result["rss_growth_bytes"] is None else round(result["rss_growth_bytes"] / 2**20, 1),
               refused=result["refused"], right_message=result["refused"] and all(e in message for e in expected),
               no_server_path=str(folder) not in message, message=message[:240])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--nul-mb", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--only", default="", help="comma-separated case names")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    names = [n for n in args.only.split(",") if n] or list(CASES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wb-expansion-") as tmp:
        for name in names:
            rows.append(run_case(name, Path(tmp), args.timeout, args.nul_mb))
            r = rows[-1]
            print(f"{name}: {r['seconds']} s, +{r['rss_growth_mb']} MB, right message: {r['right_message']}",
                  file=sys.stderr)
    parquet = next((r for r in rows if r["case"] == "parquet_dictionary"), None)
    met = parquet is not None and parquet["right_message"] and parquet["seconds"] is not None \
        and parquet["seconds"] < TARGET["seconds"] and parquet["rss_growth_mb"] < TARGET["rss_mb"]
    lines = ["| case | file | file bytes | seconds | peak RSS growth (MB) | refused with the right message | message |",
             "|---|---|---:|---:|---:|---|---|"]
    lines += [f"| {r['case']} | {r['file']} | {r['file_bytes']:,} | {r['seconds']} | {r['rss_growth_mb']} | "
              f"{'yes' if r['right_message'] else 'NO'} | {r['message'][:160].replace('|', '/')} |" for r in rows]
    all_right = all(r["right_message"] and r["no_server_path"] for r in rows)
    summary = ((f"Parquet dictionary file ({parquet['file_bytes']:,} bytes): {parquet['seconds']} s, "
                f"+{parquet['rss_growth_mb']} MB peak RSS; target < {TARGET['seconds']:.0f} s and "
                f"< {TARGET['rss_mb']:.0f} MB: {'met' if met else 'NOT met'}. " if parquet else "")
               + f"{sum(r['right_message'] for r in rows)}/{len(rows)} refused with the right message"
               + ("" if all(r["no_server_path"] for r in rows) else "; a message held a server path"))
    print("\n".join(lines))
    print(summary)
    meta = {**run_metadata("cpu"), "nul_mb": args.nul_mb, "target": TARGET}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "expansion.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    (RESULTS / "expansion.md").write_text("\n".join(markdown_header("Small files that expand", meta))
                                          + f"\n{summary}\n\n" + "\n".join(lines) + "\n")
    return 0 if met and all_right else 1


if __name__ == "__main__":
    raise SystemExit(main())
