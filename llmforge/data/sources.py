"""Raw inputs of the data stages: WARC, JSONL, Parquet and plain-text files (JSONL and text also gzip- or
zstandard-compressed), local or behind an fsspec URL.

Local files are checked up front, before any heavy work, because datatrove's readers skip what they cannot read
(a line that is not JSON, a record without text, the end of a truncated file) with at most a warning: the user gets
`file:line: what is wrong` and exit code 2 instead of a quietly smaller corpus. Remote files (s3://, hf://, ...) are
handed to datatrove's readers as they are; reading a whole bucket twice to check it would cost more than it saves.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from llmforge.artifacts import InputRef, expand_paths, raw_input
from llmforge.config import StageConfig
from llmforge.data.compression import DAMAGE, open_compressed
from llmforge.errors import InputError, json_lines, where

Format = Literal["warc", "jsonl", "parquet", "text"]
SUFFIXES: dict[str, Format] = {
    ".warc": "warc", ".warc.gz": "warc", ".parquet": "parquet", ".md": "text",
    # JSON lines as corpora name them (C4 and Dolma: .json.gz; The Pile, SlimPajama: .jsonl.zst), and text
    **{f"{stem}{compression}": fmt for stem, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".txt", "text"))
       for compression in ("", ".gz", ".zst")},
    ".json.gz": "jsonl", ".json.zst": "jsonl",
}  # fmt: skip


class ReadSettings(StageConfig):
    """How raw files are read."""

    format: Literal["auto", "warc", "jsonl", "parquet", "text"] = Field(
        "auto",
        description="Format of raw input files; auto: from the name (.warc[.gz], .jsonl/.json.gz/.ndjson with .gz or "
        ".zst, .parquet, .txt[.gz|.zst])",
    )
    text_field: str = Field("text", description="JSONL field / Parquet column holding a document's text")
    id_field: str = Field("id", description="JSONL field / Parquet column holding a document's id, if any")


class InputSettings(ReadSettings):
    """How raw files are read, and cut into tasks, by the stages that run datatrove pipelines."""

    task_mb: float = Field(
        128,
        ge=0,
        description="A local file larger than this (MB) is read by several datatrove tasks of about this size, so "
        "--workers speeds up one big file: JSONL at line starts, Parquet at row groups, WARC at records (.warc.gz "
        "at its per-record gzip members); compressed JSONL, text and remote files are read whole; 0: one task per "
        "file. Each task writes its own output shards",
    )


@dataclass
class InputFile:
    path: str  # a local path or an fsspec URL
    format: Format
    argument: str  # the command-line input it came from

    @property
    def remote(self) -> bool:
        return "://" in self.path


@dataclass
class RawInputs:
    """The files behind the raw input arguments, checked, with one lineage entry per argument."""

    files: list[InputFile]
    refs: list[InputRef]
    records: int = 0  # records in the local files (WARC records, JSONL lines, rows, files)
    remote_files: int = 0
    by_format: dict[str, int] = field(default_factory=dict)


def detect_format(name: str, configured: str) -> Format:
    if configured != "auto":
        return configured  # type: ignore[return-value]
    lower = name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return SUFFIXES[suffix]
    raise InputError(f"{name}: cannot tell the format from the name; expected .warc[.gz], .jsonl[.gz|.zst], "
                     ".json.gz, .parquet or .txt, or set --input-format")  # fmt: skip


def expand_url(url: str) -> list[str]:
    """The files behind an fsspec URL: a file, a folder (recursively) or a glob."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url)
    try:
        if any(char in path for char in "*?["):
            names = fs.glob(path)
        elif fs.isdir(path):
            names = fs.find(path)
        else:
            names = [path] if fs.exists(path) else []
    except OSError as exc:
        raise InputError(f"{url}: cannot list ({exc})") from None
    if not names:
        raise InputError(f"{url}: no file matches this URL")
    return [fs.unstrip_protocol(name) for name in sorted(names)]


def resolve_raw_inputs(arguments: Iterable[str], settings: ReadSettings, stage: str,
                       allowed: tuple[str, ...] = ("warc", "jsonl", "parquet", "text")) -> RawInputs:  # fmt: skip
    """Expand, type and check raw input arguments; each argument becomes one raw InputRef (content fingerprint)."""
    from llmforge.console import log, progress

    files: list[InputFile] = []
    refs: list[InputRef] = []
    for argument in arguments:
        argument = str(argument)
        names = expand_url(argument) if "://" in argument and not argument.startswith("file://") else None
        names = names if names is not None else expand_paths([argument])
        if not names:
            raise InputError(f"{argument}: holds no files; there is nothing to {stage}")
        typed = [InputFile(name, detect_format(name, settings.format), argument) for name in names]
        for file in typed:
            if file.format not in allowed:
                raise InputError(f"{file.path}: {stage} reads {', '.join(allowed)} files, not {file.format}"
                                 + ("; run `llmforge crawl-filter` on WARC files first" if file.format == "warc" else ""))  # fmt: skip
        files.extend(typed)

    result = RawInputs(files=files, refs=refs)
    local = [f for f in files if not f.remote]
    result.remote_files = len(files) - len(local)
    per_argument: dict[str, int] = {}
    with progress(transient=True) as bar:
        task = bar.add_task("checking inputs", total=sum(os.path.getsize(f.path) for f in local), unit="B")
        for file in local:
            records, documents = check_file(file, settings)
            result.records += records
            per_argument[file.argument] = per_argument.get(file.argument, 0) + documents
            bar.advance(task, os.path.getsize(file.path))
    for argument in dict.fromkeys(f.argument for f in local):
        if per_argument.get(argument, 0) == 0 and not any(f.remote for f in files if f.argument == argument):
            raise InputError(
                f"{argument}: holds no documents (no record with text); there is nothing to {stage}"
            )
    for file in files:
        result.by_format[file.format] = result.by_format.get(file.format, 0) + 1
    if result.remote_files:
        log(f"{result.remote_files} remote file(s) go to datatrove's readers unchecked")
    for argument in dict.fromkeys(f.argument for f in files):  # fingerprints last: bad input fails fast
        refs.append(raw_input(argument, [f.path for f in files if f.argument == argument]))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Checks, one per format: (records, documents with text); InputError naming the file and record otherwise


def check_file(file: InputFile, settings: ReadSettings) -> tuple[int, int]:
    checker = {"warc": check_warc, "jsonl": check_jsonl, "parquet": check_parquet, "text": check_text}
    try:
        return checker[file.format](file.path, settings)
    except EOFError as exc:
        raise InputError(f"{file.path}: truncated compressed file ({exc})") from None
    except DAMAGE as exc:
        raise InputError(f"{file.path}: corrupt compressed data ({exc})") from None
    except OSError as exc:
        raise InputError(f"{file.path}: cannot read ({exc.strerror or exc})") from None


class _Truncation:
    """A read-only stream that remembers decompression errors (warcio swallows them and just stops early).

    Reads go through read1 so that the bytes before the point of truncation still reach warcio, and the error
    names the first incomplete record.
    """

    def __init__(self, stream):
        self.stream = stream
        self.error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        chunks, remaining = [], size
        try:
            while size < 0 or remaining > 0:
                chunk = self.stream.read1(remaining if size >= 0 else 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        except DAMAGE as exc:
            self.error = exc
        return b"".join(chunks)


def check_warc(path: str, settings: ReadSettings) -> tuple[int, int]:
    """Every record complete (Content-Length bytes present); documents = response/conversion records."""
    from warcio.archiveiterator import ArchiveIterator

    records = documents = 0
    with open(path, "rb") as raw:
        start = raw.read(2)
        compressed = start == b"\x1f\x8b"
        if path.lower().endswith(".gz") and start and not compressed:  # datatrove decompresses by the name
            raise InputError(f"{path}: named .gz but not gzip-compressed; rename it (.warc) or compress it")
        raw.seek(0)
        stream = _Truncation(gzip.GzipFile(fileobj=raw) if compressed else raw)
        try:
            for record in ArchiveIterator(stream, no_record_parse=True):
                records += 1
                if record.format != "warc":  # warcio reads any other first line as an old ARC header
                    raise InputError(f"{where(path, record=str(records))}: not a WARC record (warcio reads it "
                                     f"as {record.format.upper()}; crawl-filter reads WARC files)")  # fmt: skip
                expected = record.length
                if expected is None:
                    raise InputError(
                        f"{where(path, record=str(records))}: WARC record without Content-Length"
                    )
                if len(record.raw_stream.read()) < expected:
                    raise InputError(f"{where(path, record=str(records))}: truncated WARC record "
                                     f"({record.rec_headers.get_header('WARC-Target-URI') or 'no URI'})")  # fmt: skip
                if record.rec_type in ("response", "conversion"):
                    documents += 1
        except InputError:
            raise
        except Exception as exc:  # warcio raises assorted errors on bytes that are not WARC
            raise InputError(f"{where(path, record=str(records + 1))}: not a valid WARC record "
                             f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        if stream.error is not None:
            raise InputError(f"{where(path, record=str(records + 1))}: truncated WARC file ({stream.error})")
    return records, documents


def check_jsonl(path: str, settings: ReadSettings) -> tuple[int, int]:

    key = settings.text_field
    records = documents = 0
    with open_compressed(path) as handle:
        for number, record in json_lines(enumerate(handle, 1), path):
            if not isinstance(record, dict):
                raise InputError(f"{where(path, number)}: not a JSON object (a {type(record).__name__})")
            if key not in record:
                fields = ", ".join(sorted(record)[:10]) or "none"
                raise InputError(f"{where(path, number)}: no '{key}' field (fields: {fields}); "
                                 "set --text-field")  # fmt: skip
            if not isinstance(record[key], str):
                raise InputError(
                    f"{where(path, number)}: field '{key}' is {type(record[key]).__name__}, not text"
                )
            records += 1
            documents += bool(record[key])
    return records, documents


def check_parquet(path: str, settings: ReadSettings) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    key = settings.text_field
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = parquet.schema_arrow
    if key not in schema.names:
        raise InputError(
            f"{path}: no '{key}' column (columns: {', '.join(schema.names[:10])}); set --text-field"
        )
    kind = schema.field(key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"{path}: column '{key}' holds {kind}, not text")
    documents = 0
    try:
        for batch in parquet.iter_batches(columns=[key]):
            lengths = pc.utf8_length(batch.column(0))
            documents += int(pc.sum(pc.greater(pc.fill_null(lengths, 0), 0)).as_py() or 0)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: unreadable Parquet data ({exc})") from None
    return parquet.metadata.num_rows, documents


def check_text(path: str, settings: ReadSettings) -> tuple[int, int]:
    with open_compressed(path) as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return 1, int(bool(text))


# ---------------------------------------------------------------------------------------------------------------
# Readers


def _root_and_relative(paths: list[str]) -> tuple[str, list[str]]:
    """A folder every path lies under (local or one fsspec filesystem), and the paths relative to it."""
    if "://" not in paths[0]:
        absolute = [os.path.abspath(p) for p in paths]
        root = os.path.commonpath([os.path.dirname(p) for p in absolute])
        return root, [os.path.relpath(p, root) for p in absolute]
    from fsspec.core import url_to_fs

    fs, _ = url_to_fs(paths[0])
    stripped = [url_to_fs(p)[1] for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in stripped])
    return fs.unstrip_protocol(root), [os.path.relpath(p, root) for p in stripped]


def reader_groups(files: list[InputFile]) -> list[tuple[Format, list[str]]]:
    """Files grouped by format and filesystem: each group becomes one datatrove reader (llmforge.data.parts)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for file in files:
        protocol = file.path.split("://")[0] if file.remote else "file"
        groups.setdefault((file.format, protocol), []).append(file.path)
    return [(fmt, paths) for (fmt, _), paths in groups.items()]
