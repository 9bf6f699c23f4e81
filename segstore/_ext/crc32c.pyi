"""Type stubs for the compiled ``segstore._ext.crc32c`` (source: ``_ext/crc32c.pyx``)."""

from typing import Any, Final, TypeAlias

import numpy.typing as npt
from typing_extensions import Buffer

# Any C-contiguous buffer (numpy arrays declare __buffer__ only for Python >= 3.12).
BufferLike: TypeAlias = Buffer | npt.NDArray[Any]

GIL_RELEASE_BYTES: Final[int]

def crc32c(data: BufferLike, value: int = 0) -> int:
    """Return the CRC32C of ``data``, continuing from ``value`` (a previous result)."""

def crc32c_portable(data: BufferLike, value: int = 0) -> int:
    """Like :func:`crc32c` but always uses the portable slicing-by-8 code (for tests)."""

def hardware_accelerated() -> bool:
    """Return True when :func:`crc32c` uses a CPU CRC32C instruction."""
