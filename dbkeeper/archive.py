"""Archives of purged rows: every batch is durable on disk before its rows are deleted.

An archive is a file named by the job's ``archive`` template (``.csv``, ``.jsonl``,
either optionally ``.gz``, or ``.parquet``) and, beside it, a manifest
``FILE.manifest.jsonl`` recording each batch: run, database, table, the keys of its
rows, the row count, where its bytes are, and whether its delete committed.

A batch goes through four steps:

1. its rows are appended to the file (a Parquet batch gets its own part file), fsynced;
2. a ``pending`` line is appended to the manifest, fsynced;
3. the rows are deleted in the database and the transaction commits;
4. a ``done`` line is appended to the manifest.

A crash between 1 and 2 leaves bytes no manifest line describes: the next run cuts
them off. A crash between 2 and 4 leaves a pending batch: the next run looks its keys
up in the table. All still there means the delete rolled back, so the batch's bytes
are cut off (the rows are still in the table and will be archived again); none there
means it committed, so the batch is marked done. Anything in between (the application
deleted or re-inserted some of those rows meanwhile) is kept, marked ``suspect`` and
reported, never dropped silently. So the table plus the archive always hold every row once.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from dbkeeper import durable, templates
from dbkeeper.errors import DbkeeperError

FORMATS = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".parquet")
PLACEHOLDERS = ("table", "database", "job", "date", "run")
MANIFEST_SUFFIX = ".manifest.jsonl"

# How many of a batch's keys are still in the table.
KeyLookup = Callable[[list[Any]], int]


def check_template(template: str) -> str:
    """Validate an archive template: known placeholders and a supported format."""
    templates.check(template, PLACEHOLDERS)
    if not template.endswith(FORMATS):
        raise ValueError(f"an archive file name must end with one of {', '.join(FORMATS)}")
    return template


def archive_format(path: str | Path) -> str:
    name = str(path)
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise DbkeeperError(f"{name}: not an archive file (formats: {', '.join(FORMATS)})")


@dataclass
class Batch:
    """One batch as the manifest records it."""

    batch: int
    run_id: int | None
    database: str
    table: str
    key: str
    keys: list[Any]
    rows: int
    columns: list[str]
    offset: int
    end: int
    part: str | None
    written_at: str
    state: str = "pending"
    note: str | None = None

    @property
    def key_count(self) -> int:
        return count_keys(self.keys)


@dataclass
class Manifest:
    """An archive file's manifest: batches in order, appended to durably."""

    path: Path
    batches: dict[int, Batch] = field(default_factory=dict)
    complete: int = 0  # bytes of whole lines

    @classmethod
    def for_file(cls, data_file: Path) -> Manifest:
        manifest = cls(data_file.with_name(data_file.name + MANIFEST_SUFFIX))
        if not manifest.path.exists():
            return manifest
        content = manifest.path.read_bytes()
        # A crash while a line was appended leaves it without its newline: that line
        # never happened (the next append cuts it off).
        manifest.complete = content.rfind(b"\n") + 1
        lines = content[: manifest.complete].decode().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                if "keys" in entry:
                    manifest.batches[entry["batch"]] = Batch(**entry)
                else:
                    known = manifest.batches[entry["batch"]]
                    known.state, known.note = entry["state"], entry.get("note")
            except (ValueError, TypeError, KeyError):
                raise DbkeeperError(f"{manifest.path}:{number}: not a manifest line") from None
        return manifest

    @property
    def data_file(self) -> Path:
        return self.path.with_name(self.path.name[: -len(MANIFEST_SUFFIX)])

    @property
    def recorded_end(self) -> int:
        return max((b.end for b in self.batches.values() if b.state != "discarded"), default=0)

    def cut_unrecorded(self) -> bool:
        """Cut off bytes past the last recorded batch: a run died before recording them,
        and their rows are still in the table. Whether there were any."""
        data = self.data_file
        if data.exists() and data.stat().st_size > self.recorded_end:
            durable.truncate(data, self.recorded_end)
            return True
        return False

    @property
    def live_parts(self) -> set[str | None]:
        return {b.part for b in self.batches.values() if b.state != "discarded"}

    def append(self, entry: dict[str, Any]) -> None:
        if self.path.exists() and self.path.stat().st_size > self.complete:
            durable.truncate(self.path, self.complete)
        line = (json.dumps(entry, default=str) + "\n").encode()
        self.complete = durable.append(self.path, line)[1]

    def mark(self, batch: Batch, state: str, note: str | None = None) -> None:
        batch.state, batch.note = state, note
        entry: dict[str, Any] = {"batch": batch.batch, "state": state}
        if note:
            entry["note"] = note
        self.append(entry)


class Archive:
    """Where one run of a purge archives its rows."""

    def __init__(
        self,
        template: str,
        *,
        job: str,
        database: str,
        table: str,
        key: str,
        run_id: int | None,
        now: datetime,
    ) -> None:
        self.format = archive_format(template)
        self.database, self.table, self.key, self.run_id = database, table, key, run_id
        values = {
            "table": table,
            "database": database,
            "job": job,
            "date": now.astimezone(UTC).date().isoformat(),
            "run": "manual" if run_id is None else str(run_id),
        }
        self.path = Path(templates.fill(template, values))
        # Any date, run or job of this table's archives, numbered siblings included.
        pattern = templates.pattern(template, {"table": table, "database": database})
        stem = pattern[: -len(self.format)]
        self._pattern = stem + ("" if stem.endswith("*") else "*") + self.format
        self._manifest: Manifest | None = None
        self.written = 0
        self.files: set[str] = set()

    def _glob(self, suffix: str) -> list[Path]:
        return templates.matching(self._pattern + suffix)

    def recover(self, present: KeyLookup) -> dict[str, int]:
        """Settle what an interrupted run left: see the module's docstring."""
        settled = {"committed": 0, "rolled_back": 0, "suspect": 0, "unrecorded_removed": 0}
        for path in self._glob(MANIFEST_SUFFIX):
            manifest = Manifest.for_file(path.with_name(path.name[: -len(MANIFEST_SUFFIX)]))
            for batch in list(manifest.batches.values()):
                if batch.state != "pending" or batch.table != self.table:
                    continue
                still = present(batch.keys)
                if still == 0:
                    manifest.mark(batch, "done", "settled after an interrupted run")
                    settled["committed"] += 1
                elif still == batch.key_count:
                    self._discard(manifest, batch)
                    settled["rolled_back"] += 1
                else:
                    note = (
                        f"{still} of its {batch.key_count} keys were back in the table when "
                        "an interrupted run was settled: those rows may be duplicates"
                    )
                    manifest.mark(batch, "suspect", note)
                    settled["suspect"] += 1
            if self.format != ".parquet" and manifest.cut_unrecorded():
                settled["unrecorded_removed"] += 1
        if self.format == ".parquet":
            # Part files written before their pending line reached the manifest.
            for part in self._glob(".part-*"):
                owner = Manifest.for_file(part.with_name(_owner_name(part.name)))
                if part.name not in owner.live_parts:
                    part.unlink()
                    settled["unrecorded_removed"] += 1
        return settled

    def _discard(self, manifest: Manifest, batch: Batch) -> None:
        if batch.part:
            (manifest.data_file.parent / batch.part).unlink(missing_ok=True)
        else:
            durable.truncate(manifest.data_file, batch.offset)
        manifest.mark(batch, "discarded", "its delete had rolled back")

    def _current(self, columns: list[str]) -> Manifest:
        """The manifest of the file this batch goes to: the template's file, or a numbered
        sibling when the table's columns changed since that file was started."""
        if self._manifest is not None and self._columns_fit(self._manifest, columns):
            return self._manifest
        path, number = self.path, 1
        while True:
            manifest = Manifest.for_file(path)
            if self._columns_fit(manifest, columns):
                self._manifest = manifest
                return manifest
            number += 1
            path = self.path.with_name(_numbered(self.path.name, self.format, number))

    @staticmethod
    def _columns_fit(manifest: Manifest, columns: list[str]) -> bool:
        kept = [b for b in manifest.batches.values() if b.state != "discarded"]
        return not kept or kept[0].columns == columns

    def write(self, columns: list[str], rows: Sequence[Sequence[Any]], keys: list[Any]) -> Batch:
        """Steps 1 and 2: the rows durably in the file, then a pending manifest line."""
        manifest = self._current(columns)
        data = manifest.data_file
        data.parent.mkdir(parents=True, exist_ok=True)
        number = max(manifest.batches, default=0) + 1
        part = None
        if self.format == ".parquet":
            part = _numbered(data.name, ".parquet", number, "part-")
            offset, end = 0, _write_parquet(data.parent / part, columns, rows)
        else:
            manifest.cut_unrecorded()
            header = manifest.recorded_end == 0
            offset, end = durable.append(data, encode(self.format, columns, rows, header))
        batch = Batch(
            batch=number,
            run_id=self.run_id,
            database=self.database,
            table=self.table,
            key=self.key,
            keys=compact_keys(keys),
            rows=len(rows),
            columns=columns,
            offset=offset,
            end=end,
            part=part,
            written_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        record = asdict(batch)
        del record["note"]
        manifest.append(record)
        manifest.batches[number] = batch
        return batch

    def done(self, batch: Batch) -> None:
        """Step 4: the delete committed."""
        assert self._manifest is not None
        self._manifest.mark(batch, "done")
        self.written += batch.rows
        self.files.add(str(self._manifest.data_file))


# -- keys ------------------------------------------------------------------------------


def compact_keys(keys: list[Any]) -> list[Any]:
    """Integer keys as [first, last] runs (purged rows are mostly consecutive); others as is."""
    if not keys or not all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
        return [str(k) if not isinstance(k, int | str) else k for k in keys]
    runs: list[list[int]] = []
    for key in sorted(keys):
        if runs and key == runs[-1][1] + 1:
            runs[-1][1] = key
        else:
            runs.append([key, key])
    return runs


def count_keys(keys: list[Any]) -> int:
    return sum(k[1] - k[0] + 1 if isinstance(k, list) else 1 for k in keys)


# -- encoding --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value as JSON or CSV can hold it."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def arrow_table(columns: list[str], rows: Sequence[Sequence[Any]]) -> Any:
    """Rows as an Arrow table; a column Arrow cannot type as one type is kept as text."""
    import pyarrow as pa

    arrays = []
    for index in range(len(columns)):
        values = [row[index] for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays.append(pa.array([None if v is None else _plain(v) for v in values], pa.string()))
    return pa.Table.from_arrays(arrays, names=columns)


def encode(suffix: str, columns: list[str], rows: Sequence[Sequence[Any]], header: bool) -> bytes:
    if suffix.startswith(".csv"):
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        sink = pa.BufferOutputStream()
        pa_csv.write_csv(
            arrow_table(columns, rows), sink, pa_csv.WriteOptions(include_header=header)
        )
        data = sink.getvalue().to_pybytes()
    else:
        data = "".join(
            json.dumps(dict(zip(columns, row, strict=True)), default=_plain, ensure_ascii=False)
            + "\n"
            for row in rows
        ).encode()
    return gzip.compress(data, mtime=0) if suffix.endswith(".gz") else data


def _write_parquet(path: Path, columns: list[str], rows: Sequence[Sequence[Any]]) -> int:
    import pyarrow.parquet as pq

    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(arrow_table(columns, rows), temporary, compression="zstd")
    durable.replace(temporary, path)
    return path.stat().st_size


def _numbered(name: str, suffix: str, number: int, label: str = "") -> str:
    return f"{name[: -len(suffix)]}.{label}{number:06d}{suffix}"


def _owner_name(part: str) -> str:
    """The archive file a Parquet part (or its temporary file) belongs to."""
    return re.sub(r"\.part-\d+\.parquet(\.tmp)?$", ".parquet", part)


# -- reading back --------------------------------------------------------------------------


def read_batches(path: Path) -> Iterator[tuple[Batch, list[tuple[Any, ...]]]]:
    """The committed batches of an archive file (or its manifest) with their rows.

    CSV values come back as text (NULL and empty text kept apart); JSON lines and
    Parquet keep their types."""
    name = str(path)
    data_file = Path(name[: -len(MANIFEST_SUFFIX)] if name.endswith(MANIFEST_SUFFIX) else name)
    suffix = archive_format(data_file)
    manifest = Manifest.for_file(data_file)
    if not manifest.batches:
        raise DbkeeperError(f"{manifest.path}: no such manifest; is {data_file} an archive?")
    content = b"" if suffix == ".parquet" else data_file.read_bytes()
    for batch in manifest.batches.values():
        if batch.state not in ("done", "suspect"):
            continue
        if batch.part:
            import pyarrow.parquet as pq

            table = pq.read_table(data_file.parent / batch.part)
            yield batch, [tuple(row.values()) for row in table.to_pylist()]
            continue
        raw = content[batch.offset : batch.end]
        if len(raw) != batch.end - batch.offset:
            raise DbkeeperError(f"{data_file}: batch {batch.batch} is cut short")
        if suffix.endswith(".gz"):
            raw = gzip.decompress(raw)
        yield batch, _decode(suffix, batch, raw)


def _decode(suffix: str, batch: Batch, raw: bytes) -> list[tuple[Any, ...]]:
    if suffix.startswith(".jsonl"):
        return [tuple(json.loads(line).values()) for line in raw.decode().splitlines() if line]
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    table = pa_csv.read_csv(
        pa.py_buffer(raw),
        read_options=pa_csv.ReadOptions(
            column_names=batch.columns, skip_rows=1 if batch.offset == 0 else 0
        ),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={column: pa.string() for column in batch.columns},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return [tuple(row.values()) for row in table.to_pylist()]
