"""Where a record sits in a journal, and a record as a reader gets it: shared by the log
and its checkpoint file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int          # byte offset just past the record in that segment


@dataclass(frozen=True)
class Record:
    position: Position   # end position of this record (pass to checkpoint())
    payload: bytes
