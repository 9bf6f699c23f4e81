"""The append-only-file engine: segment files of CRC-framed records with dense indices."""

from segstore.aof.aof import SEGMENT_BYTES_DEFAULT, Aof, PayloadSpan, SegmentInfo
from segstore.aof.fileio import FileIO
from segstore.aof.recovery import RecoveryReport

__all__ = [
    "SEGMENT_BYTES_DEFAULT",
    "Aof",
    "FileIO",
    "PayloadSpan",
    "RecoveryReport",
    "SegmentInfo",
]
