# cython: language_level=3
"""CRC32C (Castagnoli, RFC 3720) over any C-contiguous buffer.

The C code lives in ``_ext/crc32c_impl.h`` and is shared with ``records.pyx``, so the
frame kernels and this module compute CRCs with the same implementation. Python code
reaches this module through ``segstore.aof.kernels``.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint32_t


cdef extern from "crc32c_impl.h" nogil:
    void segstore_crc32c_init()
    uint32_t segstore_crc32c(uint32_t crc, const unsigned char* p, size_t n)
    uint32_t segstore_crc32c_portable(uint32_t crc, const unsigned char* p, size_t n)
    int segstore_crc32c_hardware()


segstore_crc32c_init()

# Below this size dropping and retaking the GIL (~100 ns) costs more than the CRC itself
# (hardware CRC runs at several GB/s, so 16 KiB is a few microseconds).
GIL_RELEASE_BYTES = 16384
cdef Py_ssize_t _GIL_RELEASE_BYTES = GIL_RELEASE_BYTES


cdef int _acquire(object data, Py_buffer* view) except -1:
    try:
        PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    except BufferError as exc:
        # BufferError is neither TypeError nor ValueError; callers catch those.
        raise TypeError(f"data must be a C-contiguous buffer: {exc}") from None
    return 0


cdef uint32_t _check_value(long long value) except? 0xFFFFFFFF:
    if value < 0 or value > 0xFFFFFFFF:
        raise ValueError(f"value must be a CRC32C in [0, 2**32), not {value}")
    return <uint32_t>value


def crc32c(data, long long value=0):
    """Return the CRC32C of ``data``, continuing from ``value`` (a previous result).

    ``data`` is any C-contiguous buffer (bytes, bytearray, memoryview, mmap, numpy array);
    ``crc32c(b, crc32c(a)) == crc32c(a + b)``. Uses the SSE4.2 instruction when the CPU
    has it and releases the GIL for buffers of ``GIL_RELEASE_BYTES`` or more.
    """
    cdef uint32_t crc = _check_value(value)
    cdef Py_buffer view
    _acquire(data, &view)
    try:
        if view.len >= _GIL_RELEASE_BYTES:
            with nogil:
                crc = segstore_crc32c(crc, <const unsigned char*>view.buf, <size_t>view.len)
        else:
            crc = segstore_crc32c(crc, <const unsigned char*>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return crc


def crc32c_portable(data, long long value=0):
    """Like :func:`crc32c` but always uses the portable slicing-by-8 code (for tests)."""
    cdef uint32_t crc = _check_value(value)
    cdef Py_buffer view
    _acquire(data, &view)
    try:
        with nogil:
            crc = segstore_crc32c_portable(
                crc, <const unsigned char*>view.buf, <size_t>view.len
            )
    finally:
        PyBuffer_Release(&view)
    return crc


def hardware_accelerated():
    """Return True when :func:`crc32c` uses a CPU CRC32C instruction."""
    return segstore_crc32c_hardware() != 0
