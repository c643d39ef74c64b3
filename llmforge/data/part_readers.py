"""datatrove readers that read the parts a task plan (llmforge.data.parts) gives each task.

Each reader is datatrove's own for its format, with `run` reading this task's part instead of a shard of a file
list: a whole file through datatrove's `read_file`, a part through the same record handling from a byte offset
(JSONL, WARC) or a row group (Parquet), numbering records from the part's `first` so ids match a whole read.
Imported only inside stage bodies and datatrove workers (it imports datatrove).
"""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.readers import ParquetReader, WarcReader
from datatrove.pipeline.readers.base import BaseDiskReader

from llmforge.data.blocks import TextFileReader
from llmforge.data.compression import DAMAGE, decompressing
from llmforge.data.parts import Group, Part
from llmforge.errors import InputError, where


class PartsMixin:
    """`parts[rank]` is what task `rank` reads (nothing when another reader's format holds its part)."""

    parts: dict[int, Part]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        part = self.parts.get(rank)
        if part is None:
            return
        for document in self.read_files_shard([part]):  # datatrove's counting (documents, limit, skip)
            self.update_doc_stats(document)
            yield document

    def read_file(self, part: Part) -> DocumentsPipeline:  # datatrove hands each element of the shard here
        return super().read_file(part.path) if part.whole else self.read_part(part)

    def read_part(self, part: Part) -> DocumentsPipeline:
        raise NotImplementedError


class _Window:
    """A read-only view of `length` bytes of a file from its current position."""

    def __init__(self, handle, length: int):
        self.handle, self.left = handle, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.handle.read(size) if size else b""
        self.left -= len(data)
        return data


class JsonlPartReader(PartsMixin, BaseDiskReader):
    """datatrove's JsonlReader, except that damage stops the task with an error naming the file and line:
    datatrove skips a line that is not JSON, and stops reading a file at a decoding error, with only a warning,
    so a corrupt shard would silently lose documents. Lines are split at newlines only and decoded one by one, as
    the up-front check reads them (a text-mode reader also breaks lines at a lone carriage return)."""

    name = "🐿 Jsonl"

    def __init__(self, data_folder, parts: dict[int, Part], text_key: str = "text", id_key: str = "id"):
        super().__init__(data_folder, text_key=text_key, id_key=id_key)
        self.parts = parts

    def read_file(self, part: Part) -> DocumentsPipeline:
        import orjson

        path = self.data_folder.resolve_paths(part.path)
        number = part.first
        try:
            # decompressed here rather than by fsspec, whose zstandard stream cannot be read line by line
            with (
                self.data_folder.open(part.path, "rb", compression=None) as raw,
                decompressing(raw, part.path) if part.whole else raw as handle,
            ):
                if not part.whole:
                    handle.seek(part.start)
                position = part.start
                for number, raw in enumerate(handle, part.first + 1):  # noqa: B007 (read in the except below)
                    if not part.whole and position >= part.stop:
                        break
                    position += len(raw)
                    if not raw.strip():
                        continue
                    with self.track_time():
                        try:
                            data = orjson.loads(raw)
                        except orjson.JSONDecodeError as exc:
                            raw.decode("utf-8")  # bytes that are not text are named as such below
                            raise InputError(f"{where(path, number)}: not valid JSON ({exc})") from None
                        document = self.get_document_from_dict(data, part.path, number - 1)
                    if document:
                        yield document
        except UnicodeDecodeError as exc:
            raise InputError(f"{where(path, number)}: not valid UTF-8 ({exc.reason})") from None
        except DAMAGE as exc:
            after = f" after line {number}" if number else ""
            raise InputError(f"{path}: corrupt or truncated{after} ({exc})") from None


class WarcPartReader(PartsMixin, WarcReader):
    def __init__(self, data_folder, parts: dict[int, Part]):
        super().__init__(data_folder)
        self.parts = parts

    def read_part(self, part: Part) -> DocumentsPipeline:
        from datatrove.pipeline.readers.warc import process_record
        from warcio.archiveiterator import ArchiveIterator

        # the raw bytes: warcio decompresses gzip members itself, each part starting at one
        with self.data_folder.open(part.path, "rb", compression=None) as handle:
            handle.seek(part.start)
            for number, record in enumerate(
                ArchiveIterator(_Window(handle, part.stop - part.start)), part.first
            ):
                with self.track_time():
                    extracted = process_record(record)
                    document = (
                        self.get_document_from_dict(extracted, part.path, number) if extracted else None
                    )
                if document:
                    yield document


class ParquetPartReader(PartsMixin, ParquetReader):
    def __init__(self, data_folder, parts: dict[int, Part], text_key: str = "text", id_key: str = "id"):
        super().__init__(data_folder, text_key=text_key, id_key=id_key)
        self.parts = parts

    def read_part(self, part: Part) -> DocumentsPipeline:
        import pyarrow.parquet as pq

        with self.data_folder.open(part.path, "rb") as handle, pq.ParquetFile(handle) as parquet:
            number = part.first  # datatrove numbers the rows with text only
            groups = list(range(part.start, part.stop))
            for batch in parquet.iter_batches(batch_size=self.batch_size, row_groups=groups):
                documents = []
                with self.track_time("batch"):
                    for row in batch.to_pylist():
                        document = self.get_document_from_dict(row, part.path, number)
                        if document:
                            documents.append(document)
                            number += 1
                yield from documents


class TextPartReader(PartsMixin, TextFileReader):
    def __init__(self, data_folder, parts: dict[int, Part]):
        super().__init__(data_folder)
        self.parts = parts


def make(group: Group):
    if group.format == "jsonl":
        return JsonlPartReader(group.root, group.parts, group.settings.text_field, group.settings.id_field)
    if group.format == "parquet":
        return ParquetPartReader(group.root, group.parts, group.settings.text_field, group.settings.id_field)
    if group.format == "warc":
        return WarcPartReader(group.root, group.parts)
    return TextPartReader(group.root, group.parts)
