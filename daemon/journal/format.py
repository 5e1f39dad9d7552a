"""On-disk format of the journal: record frames, segment files and the checkpoint file.

Everything here is plain blocking file I/O with no event loop involved, so `daemon.journal.log`
can run it in a worker thread and the tests can reason about bytes directly.

A frame is `magic (4) | payload length (u32 LE) | crc32 (u32 LE) | payload`. The CRC covers
the length field and the payload, so a zero-filled tail (magic mismatch), a half-written
frame (length runs past the end of the file) or a flipped bit anywhere (CRC mismatch) can
never parse as a valid record.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"EJR1"
HEADER = struct.Struct("<4sII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 64 * 2**20

CHECKPOINT_NAME = "checkpoint"
_CHECKPOINT_MAGIC = b"EJC1"
_CHECKPOINT = struct.Struct("<4sQQ")
_SEGMENT_RE = re.compile(r"^([0-9a-f]{16})\.seg$")
_LEN = struct.Struct("<I")
_SCAN_BUFFER = 1 << 20


def frame_header(payload: bytes) -> bytes:
    length = len(payload)
    crc = zlib.crc32(payload, zlib.crc32(_LEN.pack(length)))
    return HEADER.pack(MAGIC, length, crc)


def frame_problem(header: bytes | memoryview, payload: bytes | memoryview | None) -> str | None:
    """Why a frame is invalid, or None; `payload` None checks only the header."""
    magic, length, crc = HEADER.unpack(header)
    if magic != MAGIC:
        return "bad magic"
    if length == 0 or length > MAX_PAYLOAD:
        return f"implausible length {length}"
    if payload is not None and zlib.crc32(payload, zlib.crc32(_LEN.pack(length))) != crc:
        return "crc mismatch"
    return None


def segment_name(segment: int) -> str:
    return f"{segment:016x}.seg"


def list_segments(directory: Path) -> list[int]:
    found = []
    for entry in os.listdir(directory):
        match = _SEGMENT_RE.match(entry)
        if match:
            found.append(int(match.group(1), 16))
    return sorted(found)


def fsync_dir(directory: Path) -> None:
    """Make a created, renamed or removed directory entry survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ScanResult:
    valid_end: int           # offset just past the last valid record
    file_size: int
    records: int
    problem: str | None      # why scanning stopped before file_size, if it did


def scan_segment(path: Path) -> ScanResult:
    """Validate every frame by CRC; stop at the first torn or corrupt one."""
    offset = records = 0
    with open(path, "rb", buffering=_SCAN_BUFFER) as f:
        size = os.fstat(f.fileno()).st_size
        while offset < size:
            header = f.read(HEADER_SIZE)
            if len(header) < HEADER_SIZE:
                return ScanResult(offset, size, records, "partial header")
            problem = frame_problem(header, None)
            if problem is None:
                length = HEADER.unpack(header)[1]
                if offset + HEADER_SIZE + length > size:
                    problem = "record runs past end of file"
                else:
                    problem = frame_problem(header, f.read(length))
            if problem is not None:
                return ScanResult(offset, size, records, problem)
            offset += HEADER_SIZE + length
            records += 1
    return ScanResult(offset, size, records, None)


def truncate_file(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(directory: Path) -> tuple[int, int] | str | None:
    """(segment, offset); None when there is no checkpoint; a str says why it is unusable."""
    try:
        data = (directory / CHECKPOINT_NAME).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != _CHECKPOINT.size + 4:
        return f"size {len(data)}, expected {_CHECKPOINT.size + 4}"
    body, (crc,) = data[:-4], _LEN.unpack(data[-4:])
    if zlib.crc32(body) != crc:
        return "crc mismatch"
    magic, segment, offset = _CHECKPOINT.unpack(body)
    if magic != _CHECKPOINT_MAGIC:
        return "bad magic"
    return segment, offset


def write_checkpoint(directory: Path, segment: int, offset: int) -> None:
    """Write-to-temp, fsync, rename, fsync dir: a crash leaves the old or the new one whole."""
    body = _CHECKPOINT.pack(_CHECKPOINT_MAGIC, segment, offset)
    tmp = directory / (CHECKPOINT_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        write_all(fd, body + _LEN.pack(zlib.crc32(body)), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / CHECKPOINT_NAME)
    fsync_dir(directory)


def write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def remove_segments(directory: Path, segments: Iterable[int]) -> None:
    for segment in segments:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / segment_name(segment))


@dataclass
class CommitResult:
    fd: int                              # the active segment's fd after the group
    fsyncs: int
    error: OSError | None = None         # the group failed; nothing of it was acknowledged
    broken: OSError | None = None        # ...and undoing it failed too


def write_group(directory: Path, fd: int, active: int, durable_end: int,
                plan: list[tuple[int, int, list[bytes]]]) -> CommitResult:
    """Worker thread: write, fdatasync, rotate. On failure undo back to the durable state.

    A new segment's directory entry is fsync'd before its first record is acknowledged;
    the sealed segment was fdatasync'd by the step that filled it.
    """
    new_fd, fsyncs, created = fd, 0, []
    try:
        for segment, start, chunks in plan:
            if segment != active:
                path = directory / segment_name(segment)
                new_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                 0o640)
                created.append((segment, new_fd))
                fsync_dir(directory)
            write_all(new_fd, b"".join(chunks), start)
            os.fdatasync(new_fd)
            fsyncs += 1
    except OSError as exc:
        return CommitResult(fd, fsyncs, exc, _undo_group(directory, fd, durable_end, created))
    if created:
        for old in [fd, *(f for _, f in created[:-1])]:
            os.close(old)
    return CommitResult(new_fd, fsyncs)


def _undo_group(directory: Path, fd: int, durable_end: int,
                created: list[tuple[int, int]]) -> OSError | None:
    """Remove what a failed group may have left, so no rejected record is ever replayed."""
    try:
        for segment, new_fd in created:
            os.close(new_fd)
            os.unlink(directory / segment_name(segment))
        os.ftruncate(fd, durable_end)
        os.fdatasync(fd)
    except OSError as exc:
        return exc
    return None


@dataclass(frozen=True)
class Span:
    segment: int
    start: int
    end: int                 # durable end: never read past it


@dataclass
class ReadResult:
    records: list[tuple[int, int, bytes]]   # (segment, end offset, payload)
    segment: int                            # cursor after the batch
    offset: int
    problem: str | None = None              # corrupt frame found at (segment, offset)


def read_spans(directory: Path, spans: Sequence[Span], max_records: int,
               max_bytes: int) -> ReadResult:
    """Read up to max_records / max_bytes of payload (at least one record) from the spans.

    Reads in chunks with pread rather than one syscall per record; on a corrupt frame it
    stops and reports it with the cursor left at the corrupt frame.
    """
    result = ReadResult([], spans[0].segment, spans[0].start)
    budget = max_bytes
    chunk = max(64 * 1024, min(max_bytes, 4 * 2**20))
    for span in spans:
        result.segment, result.offset = span.segment, span.start
        if span.start >= span.end:
            continue
        fd = os.open(directory / segment_name(span.segment), os.O_RDONLY | os.O_CLOEXEC)
        try:
            buf, buf_at = memoryview(b""), span.start
            offset = span.start
            while offset < span.end and len(result.records) < max_records:
                if offset + HEADER_SIZE > buf_at + len(buf):
                    buf, buf_at = _pread(fd, max(chunk, HEADER_SIZE), offset, span.end), offset
                if len(buf) - (offset - buf_at) < HEADER_SIZE:
                    result.problem = "segment shorter than expected"
                    return result
                header = buf[offset - buf_at:offset - buf_at + HEADER_SIZE]
                result.problem = frame_problem(header, None)
                if result.problem:
                    return result
                length = HEADER.unpack(header)[1]
                end = offset + HEADER_SIZE + length
                if end > span.end:
                    result.problem = "record runs past durable end"
                    return result
                if result.records and length > budget:
                    return result
                if end > buf_at + len(buf):
                    buf, buf_at = _pread(fd, max(chunk, end - offset), offset, span.end), offset
                    if buf_at + len(buf) < end:
                        result.problem = "segment shorter than expected"
                        return result
                payload = buf[offset - buf_at + HEADER_SIZE:end - buf_at]
                result.problem = frame_problem(header, payload)
                if result.problem:
                    return result
                result.records.append((span.segment, end, bytes(payload)))
                budget -= length
                offset = result.offset = end
        finally:
            os.close(fd)
        if len(result.records) >= max_records or (result.records and budget <= 0):
            break
    return result


def _pread(fd: int, size: int, offset: int, limit: int) -> memoryview:
    return memoryview(os.pread(fd, min(size, limit - offset), offset))
