# cython: language_level=3
"""Record frame kernels: encode, scan, find durability evidence, verify (FORMAT.md 4).

A frame (FORMAT.md section 4), all little-endian, starting at a multiple of 8 in its file::

    0   u32  CRC32C of bytes [4, 24 + H + P)
    4   u32  P = payload bytes
    8   u64  record index
    16  u32  epoch
    20  u32  durable lag (index - durable index, 0xFFFFFFFF when unknown or too large)
    24  H    record header
    24+H P   payload
         pad zero bytes up to frame_bytes(H, P) = (24 + H + P + 7) & ~7

Kernels take buffers, ints and numpy arrays, never open files, release the GIL around
their loops, and report data problems as counts and status codes. They raise only
TypeError / ValueError for arguments they cannot use (OverflowError for an int beyond
2**63). Python code reaches them through ``segstore.aof.kernels``.
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.buffer cimport (
    PyBUF_SIMPLE,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.stdint cimport uint32_t, uint64_t
cimport numpy as cnp
from libc.string cimport memcpy, memset


cdef extern from "crc32c_impl.h" nogil:
    void segstore_crc32c_init()
    uint32_t segstore_crc32c(uint32_t crc, const unsigned char* p, size_t n)
    void segstore_crc32c_x3(const unsigned char* const* p, const size_t* n, uint32_t* out)


cdef extern from *:
    """
    /* Little-endian field access that is correct on any host and alignment. */
    static inline uint32_t segstore_load_u32(const unsigned char *p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
               ((uint32_t)p[3] << 24);
    }
    static inline uint64_t segstore_load_u64(const unsigned char *p) {
        return (uint64_t)segstore_load_u32(p) | ((uint64_t)segstore_load_u32(p + 4) << 32);
    }
    static inline void segstore_store_u32(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char)v;
        p[1] = (unsigned char)(v >> 8);
        p[2] = (unsigned char)(v >> 16);
        p[3] = (unsigned char)(v >> 24);
    }
    static inline void segstore_store_u64(unsigned char *p, uint64_t v) {
        segstore_store_u32(p, (uint32_t)v);
        segstore_store_u32(p + 4, (uint32_t)(v >> 32));
    }
    /* True when the 24 frame-header bytes are all zero (never written). */
    static inline int segstore_zero24(const unsigned char *p) {
        uint64_t a, b, c;
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, 8);
        memcpy(&c, p + 16, 8);
        return (a | b | c) == 0;
    }
    """
    uint32_t load_u32 "segstore_load_u32"(const unsigned char* p) nogil
    uint64_t load_u64 "segstore_load_u64"(const unsigned char* p) nogil
    void store_u32 "segstore_store_u32"(unsigned char* p, uint32_t v) nogil
    void store_u64 "segstore_store_u64"(unsigned char* p, uint64_t v) nogil
    bint zero24 "segstore_zero24"(const unsigned char* p) nogil


segstore_crc32c_init()
cnp.import_array()

# Frame layout (FORMAT.md 4).
FRAME_HEADER_BYTES = 24
FRAME_ALIGN_BYTES = 8
DURABLE_LAG_UNKNOWN = 0xFFFFFFFF
# Offsets and lengths are u32 in the index tables and sidecars (FORMAT.md 3, 5).
SEGMENT_BYTES_MAX = 0xFFFFFFFF
PAYLOAD_BYTES_MAX = 0xFFFFFFFF

# How a scan ended (FORMAT.md 4.1); CAPACITY means "out arrays full, call again".
END_CLEAN = 0
END_STALE = 1
END_TORN = 2
END_FULL = 3
END_CAPACITY = 4

# verify_frame / verify_frames status codes.
FRAME_OK = 0
FRAME_BAD_CRC = 1
FRAME_BAD_INDEX = 2
FRAME_BAD_LENGTH = 3
FRAME_OUT_OF_BOUNDS = 4

# Single-frame kernels keep the GIL below this size: releasing it costs more than the work.
GIL_RELEASE_BYTES = 16384

cdef enum:
    _HDR = 24
    _LAG_UNKNOWN = 0xFFFFFFFF
    _U32_MAX = 0xFFFFFFFF
    _GIL_BYTES = 16384
    _END_CLEAN = 0
    _END_STALE = 1
    _END_TORN = 2
    _END_FULL = 3
    _END_CAPACITY = 4
    _OK = 0
    _BAD_CRC = 1
    _BAD_INDEX = 2
    _BAD_LENGTH = 3
    _OUT_OF_BOUNDS = 4


# ---------------------------------------------------------------------------------------
# Argument plumbing (the only place that raises)

cdef int _acquire(object obj, Py_buffer* view, bint writable, str name) except -1:
    cdef int flags = PyBUF_SIMPLE | (PyBUF_WRITABLE if writable else 0)
    try:
        PyObject_GetBuffer(obj, view, flags)
    except BufferError as exc:
        # BufferError is neither TypeError nor ValueError, which is what callers catch.
        kind = "a writable C-contiguous buffer" if writable else "a C-contiguous buffer"
        raise TypeError(f"{name} must be {kind}: {exc}") from None
    return 0


cdef inline int _check_nonneg(long long value, str name) except -1:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    return 0


cdef inline int _check_u32(long long value, str name) except -1:
    if value < 0 or value > _U32_MAX:
        raise ValueError(f"{name} must be a u32 in [0, 2**32), not {value}")
    return 0


cdef uint64_t _run_bytes(const uint32_t* lengths, Py_ssize_t n, uint64_t header_bytes,
                         long long base_offset) except? 0:
    # Frame bytes of n records, refused before any sum can wrap: a run must end inside
    # the u32 offsets of a segment (header_bytes is checked to be a u32 by the caller).
    cdef uint64_t total = 0
    cdef Py_ssize_t k
    for k in range(n):
        total += _frame_bytes(header_bytes, lengths[k])
        if total > _U32_MAX:
            break
    if total > _U32_MAX or <uint64_t>base_offset + total > _U32_MAX:
        raise ValueError(f"batch of {total}+ bytes at file offset {base_offset} would pass "
                         "the u32 offset range")
    return total


cdef inline int _check_run(Py_ssize_t start, Py_ssize_t n, Py_ssize_t available,
                           Py_ssize_t header_len, uint64_t header_bytes) except -1:
    # Records [start, start + n) of `available`, and n headers of header_bytes each in
    # header_len bytes; written so that no product or sum can wrap.
    if start < 0 or start > available - n:
        raise ValueError(f"records [{start}, {start} + {n}) outside the {available} payloads")
    if (header_len != 0 if header_bytes == 0 else
            <uint64_t>header_len % header_bytes != 0
            or <uint64_t>header_len / header_bytes != <uint64_t>n):
        raise ValueError(f"headers has {header_len} bytes, expected {n} records x "
                         f"{header_bytes} bytes")
    return 0


cdef inline int _check_aligned(Py_ssize_t offset, Py_ssize_t length, str name) except -1:
    if offset < 0 or offset > length:
        raise ValueError(f"{name} {offset} lies outside the buffer of {length} bytes")
    if offset & 7:
        raise ValueError(f"{name} {offset} is not a multiple of 8 (FORMAT.md 4)")
    return 0


# ---------------------------------------------------------------------------------------
# nogil cores

cdef inline uint64_t _frame_bytes(uint64_t header_bytes, uint64_t payload_bytes) nogil:
    return (<uint64_t>_HDR + header_bytes + payload_bytes + 7) & ~(<uint64_t>7)


cdef inline uint32_t _durable_lag(uint64_t index, uint64_t durable_index) nogil:
    # The lag is evidence for FORMAT.md 4.3, so an unknowable one must say so, never wrap.
    if durable_index <= index and index - durable_index < <uint64_t>_LAG_UNKNOWN:
        return <uint32_t>(index - durable_index)
    return <uint32_t>_LAG_UNKNOWN


cdef inline uint32_t _frame_crc(const unsigned char* frame, uint64_t header_bytes,
                                uint32_t payload_bytes) nogil:
    return segstore_crc32c(0, frame + 4, <size_t>(_HDR - 4 + header_bytes + payload_bytes))


cdef uint64_t _encode(unsigned char* out, const unsigned char* payload, uint32_t payload_bytes,
                      const unsigned char* header, uint64_t header_bytes, uint64_t index,
                      uint32_t epoch, uint32_t lag) noexcept nogil:
    cdef uint64_t size = _frame_bytes(header_bytes, payload_bytes)
    cdef uint64_t used = _HDR + header_bytes + payload_bytes
    store_u32(out + 4, payload_bytes)
    store_u64(out + 8, index)
    store_u32(out + 16, epoch)
    store_u32(out + 20, lag)
    if header_bytes:
        memcpy(out + _HDR, header, <size_t>header_bytes)
    if payload_bytes:
        memcpy(out + _HDR + header_bytes, payload, payload_bytes)
    # Zero padding: the spec pins every byte, and stale bytes must not leak into files.
    memset(out + used, 0, <size_t>(size - used))
    store_u32(out, _frame_crc(out, header_bytes, payload_bytes))
    return size


cdef inline bint _live(uint32_t epoch, uint64_t index, uint32_t meta_epoch,
                       uint64_t epoch_cut) noexcept nogil:
    # FORMAT.md 4.2: frames of older epochs survive only up to the cut made at the bump.
    return epoch == meta_epoch or (epoch < meta_epoch and index <= epoch_cut)


cdef int _scan(const unsigned char* seg, uint64_t seg_len, uint64_t pos, uint64_t expected,
               uint64_t header_bytes, uint32_t meta_epoch, uint64_t epoch_cut,
               uint32_t* offsets_out, uint32_t* lengths_out, unsigned char* headers_out,
               uint64_t capacity, uint64_t* count_out, uint64_t* end_out) noexcept nogil:
    cdef uint64_t count = 0
    cdef uint64_t size
    cdef uint32_t payload_bytes
    cdef const unsigned char* frame
    cdef int kind
    while True:
        if seg_len - pos < _HDR:
            kind = _END_FULL
            break
        frame = seg + pos
        if zero24(frame):
            kind = _END_CLEAN
            break
        payload_bytes = load_u32(frame + 4)
        size = _frame_bytes(header_bytes, payload_bytes)
        if size > seg_len - pos or load_u32(frame) != _frame_crc(frame, header_bytes,
                                                                  payload_bytes):
            kind = _END_TORN
            break
        if not _live(load_u32(frame + 16), load_u64(frame + 8), meta_epoch, epoch_cut):
            kind = _END_STALE
            break
        if load_u64(frame + 8) < expected + count:
            # A whole, checked frame of an earlier record: left over in a recycled
            # segment file, never written by this log at this position.
            kind = _END_STALE
            break
        if load_u64(frame + 8) != expected + count:
            kind = _END_TORN
            break
        if count == capacity:
            kind = _END_CAPACITY
            break
        offsets_out[count] = <uint32_t>pos
        lengths_out[count] = payload_bytes
        if header_bytes:
            memcpy(headers_out + count * header_bytes, frame + _HDR, <size_t>header_bytes)
        count += 1
        pos += size
    count_out[0] = count
    end_out[0] = pos
    return kind


cdef long long _find_evidence(const unsigned char* seg, uint64_t seg_len, uint64_t pos,
                              uint64_t expected, uint64_t header_bytes,
                              uint32_t meta_epoch, uint64_t epoch_cut) noexcept nogil:
    cdef const unsigned char* frame
    cdef uint32_t lag, payload_bytes
    cdef uint64_t index
    # pos may start past the end (start_offset == len(segment)): compare without wrapping.
    while pos + _HDR <= seg_len:
        frame = seg + pos
        # Cheap rejections first: this walks a mostly zero 64 MiB file at 8-byte steps.
        if load_u32(frame + 16) > meta_epoch or zero24(frame):
            pos += 8
            continue
        lag = load_u32(frame + 20)
        index = load_u64(frame + 8)
        payload_bytes = load_u32(frame + 4)
        if (not _live(load_u32(frame + 16), index, meta_epoch, epoch_cut)
                or lag == _LAG_UNKNOWN or index < lag or index - lag < expected
                or _frame_bytes(header_bytes, payload_bytes) > seg_len - pos):
            pos += 8
            continue
        if load_u32(frame) == _frame_crc(frame, header_bytes, payload_bytes):
            return <long long>pos
        pos += 8
    return -1


cdef inline int _check_extent(const unsigned char* seg, uint64_t seg_len, uint64_t offset,
                              uint64_t header_bytes, uint64_t payload_bytes) noexcept nogil:
    # What _verify checks before the CRC.
    if offset > seg_len or _frame_bytes(header_bytes, payload_bytes) > seg_len - offset:
        return _OUT_OF_BOUNDS
    # Length before CRC: the CRC covers P bytes, so a wrong P would only show as a bad CRC.
    if load_u32(seg + offset + 4) != payload_bytes:
        return _BAD_LENGTH
    return _OK


cdef inline int _check_crc_and_index(const unsigned char* frame, uint32_t crc,
                                     uint64_t expected_index) noexcept nogil:
    if load_u32(frame) != crc:
        return _BAD_CRC
    if load_u64(frame + 8) != expected_index:
        return _BAD_INDEX
    return _OK


cdef inline int _verify(const unsigned char* seg, uint64_t seg_len, uint64_t offset,
                        uint64_t header_bytes, uint64_t expected_index,
                        uint64_t payload_bytes) noexcept nogil:
    cdef int status = _check_extent(seg, seg_len, offset, header_bytes, payload_bytes)
    if status != _OK:
        return status
    return _check_crc_and_index(
        seg + offset, _frame_crc(seg + offset, header_bytes, <uint32_t>payload_bytes),
        expected_index)


cdef Py_ssize_t _verify_run(const unsigned char* seg, uint64_t seg_len,
                            const uint32_t* offsets, const uint32_t* lengths, Py_ssize_t n,
                            uint64_t header_bytes, uint64_t first_index,
                            int* status) noexcept nogil:
    # Verify frames k in [0, n) (record first_index + k), three at a time with their
    # CRC chains interleaved; return the first bad k (its status in *status) or -1.
    cdef Py_ssize_t k = 0, j
    cdef const unsigned char* regions[3]
    cdef size_t sizes[3]
    cdef uint32_t crcs[3]
    cdef bint whole
    while k + 3 <= n:
        whole = True
        for j in range(3):
            if _check_extent(seg, seg_len, offsets[k + j], header_bytes,
                             lengths[k + j]) != _OK:
                whole = False
                break
            regions[j] = seg + offsets[k + j] + 4
            sizes[j] = <size_t>(_HDR - 4 + header_bytes + lengths[k + j])
        if not whole:
            break  # the loop below finds which check fails first, in order
        segstore_crc32c_x3(regions, sizes, crcs)
        for j in range(3):
            status[0] = _check_crc_and_index(seg + offsets[k + j], crcs[j],
                                             first_index + <uint64_t>(k + j))
            if status[0] != _OK:
                return k + j
        k += 3
    while k < n:
        status[0] = _verify(seg, seg_len, offsets[k], header_bytes,
                            first_index + <uint64_t>k, lengths[k])
        if status[0] != _OK:
            return k
        k += 1
    status[0] = _OK
    return -1


# ---------------------------------------------------------------------------------------
# Python entry points

def frame_bytes(long long header_bytes, long long payload_bytes):
    """Return the size of one frame: ``(24 + header_bytes + payload_bytes + 7) & ~7``."""
    _check_nonneg(header_bytes, "header_bytes")
    _check_u32(payload_bytes, "payload_bytes")
    return _frame_bytes(<uint64_t>header_bytes, <uint64_t>payload_bytes)


def batch_bytes(long long header_bytes, const uint32_t[::1] payload_lengths):
    """Return the total frame bytes of a batch with the given payload lengths."""
    _check_nonneg(header_bytes, "header_bytes")
    cdef uint64_t total = 0
    cdef Py_ssize_t k
    with nogil:
        for k in range(payload_lengths.shape[0]):
            total += _frame_bytes(<uint64_t>header_bytes, payload_lengths[k])
    return total


def encode_one(out, Py_ssize_t out_offset, payload, header, long long index, long long epoch,
               long long durable_index):
    """Write one frame at ``out[out_offset:]`` and return its size (:func:`frame_bytes`).

    ``header`` holds exactly H bytes (``b""`` when H is 0); H is taken from its length.
    The durable lag is ``index - durable_index`` when that is in ``[0, 0xFFFFFFFF)``, else
    ``0xFFFFFFFF``. Padding is zeroed. ``out_offset`` need not be 8-aligned within ``out``
    (a staging buffer); the caller places frames at 8-aligned file offsets. ValueError when
    ``out`` is too small or a number is out of its field's range.
    """
    _check_nonneg(index, "index")
    _check_u32(epoch, "epoch")
    _check_nonneg(durable_index, "durable_index")
    cdef Py_buffer out_view, payload_view, header_view
    cdef uint64_t size, written
    cdef uint32_t lag = _durable_lag(<uint64_t>index, <uint64_t>durable_index)
    _acquire(payload, &payload_view, False, "payload")
    try:
        _acquire(header, &header_view, False, "header")
        try:
            _acquire(out, &out_view, True, "out")
            try:
                if payload_view.len > _U32_MAX:
                    raise ValueError(f"payload of {payload_view.len} bytes exceeds the u32 "
                                     "length field")
                size = _frame_bytes(header_view.len, payload_view.len)
                if out_offset < 0 or <uint64_t>out_offset + size > <uint64_t>out_view.len:
                    raise ValueError(f"out has {out_view.len} bytes; a {size}-byte frame at "
                                     f"offset {out_offset} does not fit")
                if size >= _GIL_BYTES:
                    with nogil:
                        written = _encode(
                            <unsigned char*>out_view.buf + out_offset,
                            <const unsigned char*>payload_view.buf, <uint32_t>payload_view.len,
                            <const unsigned char*>header_view.buf, header_view.len,
                            <uint64_t>index, <uint32_t>epoch, lag)
                else:
                    written = _encode(
                        <unsigned char*>out_view.buf + out_offset,
                        <const unsigned char*>payload_view.buf, <uint32_t>payload_view.len,
                        <const unsigned char*>header_view.buf, header_view.len,
                        <uint64_t>index, <uint32_t>epoch, lag)
            finally:
                PyBuffer_Release(&out_view)
        finally:
            PyBuffer_Release(&header_view)
    finally:
        PyBuffer_Release(&payload_view)
    return written


def gathered_extent(const uint64_t[::1] offsets, const uint32_t[::1] lengths):
    """``(end, longest)`` of payloads ``[offsets[k], offsets[k] + lengths[k])``: the
    first byte past all of them (at most 2**64 - 1) and the largest length, (0, 0) for
    none; one pass with the GIL released. ValueError if the columns differ in length."""
    if offsets.shape[0] != lengths.shape[0]:
        raise ValueError(f"{offsets.shape[0]} offsets but {lengths.shape[0]} lengths")
    cdef Py_ssize_t k
    cdef uint64_t end = 0, payload_end
    cdef uint32_t longest = 0
    with nogil:
        for k in range(offsets.shape[0]):
            payload_end = offsets[k] + lengths[k]
            if payload_end < offsets[k]:
                payload_end = <uint64_t>-1  # (wrapped: saturate)
            if payload_end > end:
                end = payload_end
            if lengths[k] > longest:
                longest = lengths[k]
    return end, longest


def encode_gathered(out, Py_ssize_t out_offset, source, const uint64_t[::1] payload_offsets,
                    const uint32_t[::1] payload_lengths, Py_ssize_t start, headers,
                    long long header_bytes, long long first_index, long long epoch,
                    long long durable_index, long long base_offset,
                    uint32_t[::1] frame_offsets_out):
    """Write n frames back to back at ``out[out_offset:]``; return the bytes written.

    Record k (``n = len(frame_offsets_out)``) carries payload ``start + k``:
    ``source[payload_offsets[j]:payload_offsets[j] + payload_lengths[j]]`` with
    ``j = start + k``, so payloads may lie anywhere in one buffer (another log's
    mapping, say) and no Python object per payload is needed; ``headers`` holds the n
    records' ``n * header_bytes`` header bytes. Frame k gets index ``first_index + k``
    and ``frame_offsets_out[k] = base_offset + `` its offset relative to ``out_offset``
    (so ``base_offset`` is the file offset ``out[out_offset]`` will be written at). GIL
    released. ValueError, with nothing written, when a payload lies outside ``source``.
    """
    _check_u32(header_bytes, "header_bytes")
    _check_nonneg(first_index, "first_index")
    _check_u32(epoch, "epoch")
    _check_nonneg(durable_index, "durable_index")
    _check_nonneg(base_offset, "base_offset")
    cdef Py_ssize_t n = frame_offsets_out.shape[0]
    if payload_offsets.shape[0] != payload_lengths.shape[0]:
        raise ValueError(f"payload_offsets has {payload_offsets.shape[0]} entries, "
                         f"payload_lengths {payload_lengths.shape[0]}")
    cdef Py_ssize_t k, j
    cdef uint64_t total, pos = 0, index
    cdef uint64_t h = <uint64_t>header_bytes
    cdef Py_buffer out_view, source_view, headers_view
    _acquire(source, &source_view, False, "source")
    try:
        _acquire(headers, &headers_view, False, "headers")
        try:
            _check_run(start, n, payload_lengths.shape[0], headers_view.len, h)
            total = _run_bytes(&payload_lengths[0] + start if n else NULL, n, h, base_offset)
            _acquire(out, &out_view, True, "out")
            try:
                for k in range(n):
                    j = start + k
                    if (payload_offsets[j] > <uint64_t>source_view.len
                            or payload_lengths[j] > <uint64_t>source_view.len - payload_offsets[j]):
                        raise ValueError(f"payload {j} ({payload_lengths[j]} bytes at "
                                         f"{payload_offsets[j]}) lies outside the "
                                         f"{source_view.len}-byte source")
                if out_offset < 0 or <uint64_t>out_offset + total > <uint64_t>out_view.len:
                    raise ValueError(f"out has {out_view.len} bytes; a {total}-byte batch at "
                                     f"offset {out_offset} does not fit")
                with nogil:
                    for k in range(n):
                        j = start + k
                        index = <uint64_t>first_index + <uint64_t>k
                        frame_offsets_out[k] = <uint32_t>(<uint64_t>base_offset + pos)
                        pos += _encode(
                            <unsigned char*>out_view.buf + out_offset + pos,
                            <const unsigned char*>source_view.buf + payload_offsets[j],
                            payload_lengths[j],
                            <const unsigned char*>headers_view.buf + h * <uint64_t>k, h,
                            index, <uint32_t>epoch,
                            _durable_lag(index, <uint64_t>durable_index))
            finally:
                PyBuffer_Release(&out_view)
        finally:
            PyBuffer_Release(&headers_view)
    finally:
        PyBuffer_Release(&source_view)
    return pos


cdef inline const unsigned char* _bytes_of(object item, Py_buffer* view, Py_ssize_t* size,
                                           bint* acquired) except NULL:
    # bytes, the common case, without the buffer protocol; anything else through it
    # (then ``acquired`` says the caller must release ``view``).
    if PyBytes_CheckExact(item):
        size[0] = PyBytes_GET_SIZE(item)
        acquired[0] = False
        return <const unsigned char*>PyBytes_AS_STRING(item)
    _acquire(item, view, False, "payload")
    acquired[0] = True
    size[0] = view.len
    return <const unsigned char*>view.buf


def measure_payloads(payloads, uint32_t[::1] lengths_out):
    """Fill ``lengths_out`` with the size of each payload of a list or tuple; return the
    largest (0 for none).

    Raises TypeError for an item that is not a contiguous byte buffer and ValueError for
    one over ``PAYLOAD_BYTES_MAX``: callers validate a whole batch before writing any.
    """
    if not isinstance(payloads, (list, tuple)):
        raise TypeError("payloads must be a list or tuple of byte buffers")
    cdef Py_ssize_t n = len(payloads)
    if lengths_out.shape[0] < n:
        raise ValueError(f"lengths_out holds {lengths_out.shape[0]} entries, not {n}")
    cdef Py_ssize_t k, size
    cdef uint32_t longest = 0
    cdef Py_buffer view
    cdef bint acquired
    for k in range(n):
        _bytes_of(payloads[k], &view, &size, &acquired)
        if acquired:
            PyBuffer_Release(&view)
        if <uint64_t>size > _U32_MAX:
            raise ValueError(f"payload {k} has {size} bytes, more than a frame holds")
        lengths_out[k] = <uint32_t>size
        if <uint32_t>size > longest:
            longest = <uint32_t>size
    return longest


def fit_frames(const uint32_t[::1] lengths, Py_ssize_t start, long long header_bytes,
               long long room_bytes):
    """How many frames from ``lengths[start:]`` fit in ``room_bytes``: (count, bytes)."""
    _check_nonneg(header_bytes, "header_bytes")
    cdef Py_ssize_t k = start
    cdef uint64_t used = 0, size
    if start < 0 or start > lengths.shape[0]:
        raise ValueError(f"start {start} outside {lengths.shape[0]} lengths")
    while k < lengths.shape[0]:
        size = _frame_bytes(<uint64_t>header_bytes, lengths[k])
        if room_bytes < 0 or used + size > <uint64_t>room_bytes:
            break
        used += size
        k += 1
    return k - start, used


def encode_payloads(out, Py_ssize_t out_offset, payloads, Py_ssize_t start,
                    const uint32_t[::1] payload_lengths, headers, long long header_bytes,
                    long long first_index, long long epoch, long long durable_index,
                    long long base_offset, uint32_t[::1] frame_offsets_out):
    """Like :func:`encode_gathered`, straight from a list of payload objects (no join).

    Encodes ``payloads[start:start + n]`` with ``n = len(frame_offsets_out)``, whose
    sizes ``payload_lengths[start:start + n]`` came from :func:`measure_payloads`;
    ``headers`` holds their ``n * header_bytes`` header bytes. Holds the GIL: it reads
    Python objects. Returns the bytes written.
    """
    _check_u32(header_bytes, "header_bytes")
    _check_nonneg(first_index, "first_index")
    _check_u32(epoch, "epoch")
    _check_nonneg(durable_index, "durable_index")
    _check_nonneg(base_offset, "base_offset")
    if not isinstance(payloads, (list, tuple)):
        raise TypeError("payloads must be a list or tuple of byte buffers")
    cdef Py_ssize_t n = frame_offsets_out.shape[0]
    cdef uint64_t h = <uint64_t>header_bytes, total, pos = 0, index
    cdef Py_ssize_t k, size
    cdef Py_buffer out_view, headers_view, item_view
    cdef const unsigned char* payload
    cdef bint acquired
    _acquire(headers, &headers_view, False, "headers")
    try:
        _check_run(start, n, min(len(payloads), payload_lengths.shape[0]), headers_view.len, h)
        total = _run_bytes(&payload_lengths[0] + start if n else NULL, n, h, base_offset)
        _acquire(out, &out_view, True, "out")
        try:
            if out_offset < 0 or <uint64_t>out_offset + total > <uint64_t>out_view.len:
                raise ValueError(f"out has {out_view.len} bytes; a {total}-byte batch at "
                                 f"offset {out_offset} does not fit")
            for k in range(n):
                payload = _bytes_of(payloads[start + k], &item_view, &size, &acquired)
                try:
                    if <uint64_t>size != payload_lengths[start + k]:
                        raise ValueError(f"payload {start + k} changed size while encoding")
                    index = <uint64_t>first_index + <uint64_t>k
                    frame_offsets_out[k] = <uint32_t>(<uint64_t>base_offset + pos)
                    pos += _encode(<unsigned char*>out_view.buf + out_offset + pos, payload,
                                   <uint32_t>size,
                                   <const unsigned char*>headers_view.buf + h * <uint64_t>k,
                                   h, index, <uint32_t>epoch,
                                   _durable_lag(index, <uint64_t>durable_index))
                finally:
                    if acquired:
                        PyBuffer_Release(&item_view)
        finally:
            PyBuffer_Release(&out_view)
    finally:
        PyBuffer_Release(&headers_view)
    return pos


def scan_segment(segment, Py_ssize_t start_offset, long long expected_index,
                 long long header_bytes, long long meta_epoch, long long epoch_cut,
                 uint32_t[::1] offsets_out, uint32_t[::1] lengths_out, headers_out):
    """Read valid frames from ``start_offset``; return ``(count, end_offset, end_kind)``.

    A frame is taken while it fits in the buffer, its CRC matches, its index is
    ``expected_index + count`` and it is live (FORMAT.md 4.1, 4.2); its offset, payload
    length and header go to ``offsets_out``, ``lengths_out`` and ``headers_out`` (any
    writable C-contiguous buffer of at least ``len(offsets_out) * header_bytes`` bytes).
    ``end_offset`` is where the frame that ended the scan starts; ``end_kind`` is one of
    ``END_CLEAN, END_STALE, END_TORN, END_FULL`` or ``END_CAPACITY`` (the out arrays are
    full and the next frame is valid: grow them and call again from ``end_offset`` with
    ``expected_index + count``).
    """
    _check_nonneg(expected_index, "expected_index")
    _check_nonneg(header_bytes, "header_bytes")
    _check_u32(meta_epoch, "meta_epoch")
    _check_nonneg(epoch_cut, "epoch_cut")
    cdef Py_ssize_t capacity = offsets_out.shape[0]
    if lengths_out.shape[0] < capacity:
        raise ValueError(f"lengths_out holds {lengths_out.shape[0]} entries, offsets_out "
                         f"{capacity}")
    cdef uint64_t count = 0, end_offset = 0
    cdef int kind
    cdef Py_buffer seg_view, headers_view
    _acquire(segment, &seg_view, False, "segment")
    try:
        _acquire(headers_out, &headers_view, True, "headers_out")
        try:
            if seg_view.len > _U32_MAX:
                raise ValueError(f"segment of {seg_view.len} bytes exceeds the u32 offset "
                                 "range")
            _check_aligned(start_offset, seg_view.len, "start_offset")
            if <uint64_t>headers_view.len < <uint64_t>capacity * <uint64_t>header_bytes:
                raise ValueError(f"headers_out has {headers_view.len} bytes, needs {capacity}"
                                 f" x {header_bytes}")
            with nogil:
                kind = _scan(<const unsigned char*>seg_view.buf, seg_view.len, start_offset,
                             <uint64_t>expected_index, <uint64_t>header_bytes,
                             <uint32_t>meta_epoch, <uint64_t>epoch_cut,
                             &offsets_out[0] if capacity else NULL,
                             &lengths_out[0] if capacity else NULL,
                             <unsigned char*>headers_view.buf, capacity, &count, &end_offset)
        finally:
            PyBuffer_Release(&headers_view)
    finally:
        PyBuffer_Release(&seg_view)
    return count, end_offset, kind


def find_durable_evidence(segment, Py_ssize_t start_offset, long long expected_index,
                          long long header_bytes, long long meta_epoch,
                          long long epoch_cut=0):
    """Return the offset of a frame proving record ``expected_index`` durable, else -1.

    FORMAT.md 4.3: search from ``start_offset + 8`` at 8-byte steps to the end of the
    buffer for a frame whose CRC matches, that is live (FORMAT.md 4.2: its epoch is
    ``meta_epoch``, or older with its index at most ``epoch_cut``) and whose
    ``index - durable_lag >= expected_index`` (an unknown lag proves nothing).
    """
    _check_nonneg(epoch_cut, "epoch_cut")
    _check_nonneg(expected_index, "expected_index")
    _check_nonneg(header_bytes, "header_bytes")
    _check_u32(meta_epoch, "meta_epoch")
    cdef long long found
    cdef Py_buffer seg_view
    _acquire(segment, &seg_view, False, "segment")
    try:
        _check_aligned(start_offset, seg_view.len, "start_offset")
        with nogil:
            found = _find_evidence(<const unsigned char*>seg_view.buf, seg_view.len,
                                   <uint64_t>start_offset + 8, <uint64_t>expected_index,
                                   <uint64_t>header_bytes, <uint32_t>meta_epoch,
                                   <uint64_t>epoch_cut)
    finally:
        PyBuffer_Release(&seg_view)
    return found


def verify_frame(segment, Py_ssize_t offset, Py_ssize_t header_bytes,
                 long long expected_index, Py_ssize_t payload_bytes):
    """Check the frame at ``offset``; return ``FRAME_OK`` (0) or a ``FRAME_*`` status.

    OK means its CRC matches, its index is ``expected_index`` and its payload length is
    ``payload_bytes``. Runs on every read, so it checks arguments only as far as memory
    safety needs (negative sizes or offsets are ``FRAME_OUT_OF_BOUNDS``).
    """
    cdef Py_buffer seg_view
    cdef int status
    if offset < 0 or header_bytes < 0 or payload_bytes < 0 or payload_bytes > _U32_MAX:
        return _OUT_OF_BOUNDS
    if expected_index < 0:
        raise ValueError(f"expected_index must be >= 0, not {expected_index}")
    _acquire(segment, &seg_view, False, "segment")
    if payload_bytes + header_bytes >= _GIL_BYTES:
        with nogil:
            status = _verify(<const unsigned char*>seg_view.buf, seg_view.len, offset,
                             header_bytes, expected_index, payload_bytes)
    else:
        status = _verify(<const unsigned char*>seg_view.buf, seg_view.len, offset,
                         header_bytes, expected_index, payload_bytes)
    PyBuffer_Release(&seg_view)
    return status


def verify_frames(segment, const uint32_t[::1] offsets, const uint32_t[::1] lengths,
                  long long header_bytes, long long first_index):
    """Verify n frames (record k has index ``first_index + k``); GIL released.

    Return ``(-1, FRAME_OK)`` when all are good, else ``(k, status)`` for the first bad one.
    """
    _check_nonneg(header_bytes, "header_bytes")
    _check_nonneg(first_index, "first_index")
    cdef Py_ssize_t n = offsets.shape[0]
    if lengths.shape[0] != n:
        raise ValueError(f"offsets has {n} entries, lengths {lengths.shape[0]}")
    cdef Py_ssize_t bad = -1
    cdef int status = _OK
    cdef Py_buffer seg_view
    if n == 0:
        return bad, status
    _acquire(segment, &seg_view, False, "segment")
    try:
        with nogil:
            bad = _verify_run(<const unsigned char*>seg_view.buf, seg_view.len, &offsets[0],
                              &lengths[0], n, <uint64_t>header_bytes, <uint64_t>first_index,
                              &status)
    finally:
        PyBuffer_Release(&seg_view)
    return bad, status


def read_frame_fields(segment, Py_ssize_t offset):
    """Return the raw fields ``(crc, payload_bytes, index, epoch, durable_lag)`` at ``offset``.

    No checks beyond bounds: for error messages and the dump tool. ValueError when fewer
    than 24 bytes remain at ``offset``.
    """
    cdef Py_buffer seg_view
    cdef const unsigned char* frame
    _acquire(segment, &seg_view, False, "segment")
    try:
        if offset < 0 or offset > seg_view.len - _HDR:
            raise ValueError(f"no 24-byte frame header at offset {offset} in a buffer of "
                             f"{seg_view.len} bytes")
        frame = <const unsigned char*>seg_view.buf + offset
        return (load_u32(frame), load_u32(frame + 4), load_u64(frame + 8),
                load_u32(frame + 16), load_u32(frame + 20))
    finally:
        PyBuffer_Release(&seg_view)



cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1
    object PyMemoryView_FromObject(object obj)
    int PyBuffer_FillInfo(Py_buffer* view, object obj, void* buf, Py_ssize_t length,
                          int readonly, int flags) except -1


cdef inline const uint32_t* _u32_column(object column, Py_ssize_t position) except NULL:
    # The read path's index columns: contiguous native uint32 numpy arrays. The numpy C
    # API, not attribute lookups, keeps this check to a few nanoseconds.
    if not cnp.PyArray_Check(column):
        raise TypeError("index columns must be uint32 numpy arrays")
    cdef cnp.ndarray array = <cnp.ndarray>column
    if cnp.PyArray_TYPE(array) != cnp.NPY_UINT32 or not cnp.PyArray_ISCARRAY_RO(array):
        raise TypeError("index columns must be contiguous native uint32 numpy arrays")
    if position < 0 or position >= cnp.PyArray_SIZE(array):
        raise ValueError(f"position {position} outside an index of "
                         f"{cnp.PyArray_SIZE(array)} records")
    return <const uint32_t*>cnp.PyArray_DATA(array)


cdef class RecordReader:
    """Zero-copy record payloads of one mapped segment: ``Aof.read``'s hot path.

    Holds a buffer export of the mapping for its whole life, and every memoryview it
    returns holds a reference to it, so the mapping cannot be closed (``mmap.close``
    raises BufferError) while any view is alive: a stale view reads stale bytes, never
    unmapped memory. Building each view here costs about half of slicing a memoryview.
    """

    cdef Py_buffer _source
    cdef bint _has_source
    cdef const unsigned char* _window
    cdef Py_ssize_t _window_bytes

    def __cinit__(self, mapping):
        _acquire(mapping, &self._source, False, "mapping")
        self._has_source = True

    def __dealloc__(self):
        if self._has_source:
            PyBuffer_Release(&self._source)

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        # Exports the window set by read() just before (the GIL makes the pair atomic).
        if flags & PyBUF_WRITABLE:
            raise BufferError("record views are read-only")
        PyBuffer_FillInfo(buffer, self, <void*>self._window, self._window_bytes, 1, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    @property
    def nbytes(self):
        """Size of the mapped segment in bytes."""
        return self._source.len

    cdef const unsigned char* _frame(self, object offsets, object lengths,
                                     Py_ssize_t position, Py_ssize_t header_bytes,
                                     long long index, bint verify,
                                     uint64_t* length) except? NULL:
        # The checked frame of the record at ``position`` (its payload size via
        # ``length``), or NULL when it does not check out.
        cdef const uint32_t* offset_column = _u32_column(offsets, position)
        cdef const uint32_t* length_column = _u32_column(lengths, position)
        cdef uint64_t offset = offset_column[position]
        length[0] = length_column[position]
        cdef const unsigned char* base = <const unsigned char*>self._source.buf
        if header_bytes < 0 or index < 0:
            raise ValueError("header_bytes and index must be >= 0")
        if verify:
            if _verify(base, self._source.len, offset, header_bytes, index,
                       length[0]) != _OK:
                return NULL
        elif offset + _frame_bytes(header_bytes, length[0]) > <uint64_t>self._source.len:
            return NULL
        return base + offset

    cpdef object read(self, object offsets, object lengths, Py_ssize_t position,
                      Py_ssize_t header_bytes, long long index, bint verify):
        """The payload of the record at ``position`` of the segment's index.

        With ``verify`` the frame's CRC, index and length are checked first. Returns
        None when the frame does not check out (call :func:`verify_frame` for why).
        """
        cdef uint64_t length
        cdef const unsigned char* frame = self._frame(
            offsets, lengths, position, header_bytes, index, verify, &length)
        if frame == NULL:
            return None
        self._window = frame + _HDR + header_bytes
        self._window_bytes = <Py_ssize_t>length
        return PyMemoryView_FromObject(self)

    cpdef object read_copy(self, object offsets, object lengths, Py_ssize_t position,
                           Py_ssize_t header_bytes, long long index, bint verify):
        """``(header, payload)`` of the record at ``position`` as two ``bytes``.

        Both come from the frame itself (checked first with ``verify``); None when the
        frame does not check out.
        """
        cdef uint64_t length
        cdef const unsigned char* frame = self._frame(
            offsets, lengths, position, header_bytes, index, verify, &length)
        if frame == NULL:
            return None
        cdef const char* header = <const char*>(frame + _HDR)
        return (PyBytes_FromStringAndSize(header, header_bytes),
                PyBytes_FromStringAndSize(header + header_bytes, <Py_ssize_t>length))

    def read_many(self, object offsets, object lengths, Py_ssize_t start, Py_ssize_t end,
                  Py_ssize_t header_bytes, long long first_index, bint verify,
                  bint copy=False):
        """Payloads of positions ``[start, end)`` as a list (``read_range``).

        Views of the mapping, or ``bytes`` copies with ``copy`` (cheaper than a view for
        small records). Position k holds record ``first_index + k``. Frames are verified
        in one pass without the GIL first; returns None if any does not check out (call
        :func:`verify_frames` for which).
        """
        if start < 0 or end < start or header_bytes < 0 or first_index < 0:
            raise ValueError("need 0 <= start <= end, header_bytes >= 0, first_index >= 0")
        if start == end:
            return []
        cdef const uint32_t* offset_column = _u32_column(offsets, end - 1)
        cdef const uint32_t* length_column = _u32_column(lengths, end - 1)
        cdef const unsigned char* base = <const unsigned char*>self._source.buf
        cdef uint64_t size = <uint64_t>self._source.len
        cdef Py_ssize_t k
        cdef bint bad = False
        cdef int status
        with nogil:
            if verify:
                bad = _verify_run(base, size, offset_column + start, length_column + start,
                                  end - start, header_bytes, <uint64_t>(first_index + start),
                                  &status) >= 0
            else:
                for k in range(start, end):
                    if offset_column[k] + _frame_bytes(header_bytes, length_column[k]) > size:
                        bad = True
                        break
        if bad:
            return None
        cdef list copies
        cdef object item
        cdef const unsigned char* payload
        if copy:
            # Filled with PyList_SET_ITEM (steals a reference; no bounds check and no
            # old item to release): W4's read_range scan went from 9.4 M to 10.0 M
            # records/s (docs/PERFORMANCE.md).
            copies = PyList_New(end - start)
            for k in range(start, end):
                payload = base + offset_column[k] + _HDR + header_bytes
                item = PyBytes_FromStringAndSize(
                    <const char*>payload, <Py_ssize_t>length_column[k])
                Py_INCREF(item)
                PyList_SET_ITEM(copies, k - start, item)
            return copies
        # One exported view of the whole segment; its slices share its managed buffer,
        # which halves the cost of each record's view.
        self._window = base
        self._window_bytes = self._source.len
        cdef object whole = PyMemoryView_FromObject(self)
        cdef list views = [None] * (end - start)
        cdef Py_ssize_t first_byte
        for k in range(start, end):
            first_byte = offset_column[k] + _HDR + header_bytes
            views[k - start] = whole[first_byte:first_byte + <Py_ssize_t>length_column[k]]
        return views


cdef class SegmentIndexBase:
    """The index fields of a segment, readable from C by :class:`ReadPath`.

    ``segstore.aof.segment.Segment`` subclasses it; Python code owns every mutation.
    """

    cdef public long long first_index
    cdef public long long count
    cdef public object offsets
    cdef public object lengths
    cdef public object reader


cdef class ReadPath:
    """``Aof.read`` in one compiled call: locate the segment, verify, return the view.

    Returns None for everything unusual (not an int, out of range, segment not mapped
    yet, a frame that does not check out) so the caller's slow path can map, raise
    the precise error, or both; :meth:`payload` calls that slow path, ``slow``, itself.
    """

    cdef list _segments
    cdef public long long first_index
    cdef public Py_ssize_t header_bytes
    cdef public bint verify
    cdef public object slow

    def __cinit__(self):
        self._segments = []
        self.first_index = 1

    def set_segments(self, list segments):
        """Adopt the Aof's list of segments (SegmentIndexBase), oldest first."""
        for segment in segments:
            if not isinstance(segment, SegmentIndexBase):
                raise TypeError("segments must derive from SegmentIndexBase")
        self._segments = list(segments)

    cdef SegmentIndexBase _locate(self, object index, long long* wanted):
        # The segment holding ``index`` (its position via ``wanted``), or None.
        if type(index) is not int:
            return None
        cdef int overflow = 0
        wanted[0] = PyLong_AsLongLongAndOverflow(index, &overflow)
        if overflow:
            return None
        cdef Py_ssize_t n = len(self._segments)
        if n == 0 or wanted[0] < self.first_index:
            return None
        cdef SegmentIndexBase segment = <SegmentIndexBase>self._segments[n - 1]
        cdef Py_ssize_t lo, hi, mid
        if wanted[0] < segment.first_index:
            lo = 0
            hi = n - 1
            while lo < hi:  # last segment whose first index <= wanted
                mid = (lo + hi + 1) >> 1
                if (<SegmentIndexBase>self._segments[mid]).first_index <= wanted[0]:
                    lo = mid
                else:
                    hi = mid - 1
            segment = <SegmentIndexBase>self._segments[lo]
        cdef long long position = wanted[0] - segment.first_index
        if position < 0 or position >= segment.count or segment.reader is None:
            return None
        return segment

    def read(self, index):
        """The payload of record ``index``, or None to take the slow path."""
        cdef long long wanted
        cdef SegmentIndexBase segment = self._locate(index, &wanted)
        if segment is None:
            return None
        return (<RecordReader>segment.reader).read(
            segment.offsets, segment.lengths, wanted - segment.first_index,
            self.header_bytes, wanted, self.verify
        )

    def payload(self, index):
        """The payload of record ``index``, from ``slow(index)`` where :meth:`read`
        would return None: ``Aof.read`` with no Python frame on its common path."""
        cdef long long wanted
        cdef SegmentIndexBase segment = self._locate(index, &wanted)
        cdef object view = None
        if segment is not None:
            view = (<RecordReader>segment.reader).read(
                segment.offsets, segment.lengths, wanted - segment.first_index,
                self.header_bytes, wanted, self.verify
            )
        if view is None:
            return self.slow(index)
        return view

    def read_copy(self, index):
        """``(header, payload)`` bytes of record ``index``, or None for the slow path."""
        cdef long long wanted
        cdef SegmentIndexBase segment = self._locate(index, &wanted)
        if segment is None:
            return None
        return (<RecordReader>segment.reader).read_copy(
            segment.offsets, segment.lengths, wanted - segment.first_index,
            self.header_bytes, wanted, self.verify
        )


# ---------------------------------------------------------------------------------------
# The segmented log's record header (FORMAT.md 7.2) and the partition header of app_log
# values (FORMAT.md 7.1): the write path's per-entry work, and entries built on reads.
#
# These two touch Python objects beyond buffers (a dict of next partition indices, the
# list of values, and, for build_log_entries, a type and its slot descriptors): the
# per-entry Python they replace was the store's cost, and each has a pure-Python twin
# in segstore/raft/segmented_store.py (tests/test_kernel_records.py compares them).

LOG_ROW_BYTES = 32
# LogRowBuffer.add: the entry needs the Python twin (a refusal, a value that is not
# bytes, or a next index that does not fit a u64); nothing was changed.
ROW_SLOW = -1

cdef enum:
    _ROW = 32
    _PARTITION_HDR = 16
    _APP_LOG = 1
    _NO_PARTITION = 0xFFFFFFFF
    _SLOW = -1


cdef extern from "Python.h":
    object PyLong_FromUnsignedLong(unsigned long v)
    object PyLong_FromUnsignedLongLong(unsigned long long v)
    # Errors checked by hand: an overflow means "take the slow path", not an exception.
    unsigned long long PyLong_AsUnsignedLongLong(object obj) noexcept
    void* PyDict_GetItem(object d, object key)
    int PyDict_SetItem(object d, object key, object value) except -1
    int PyList_Append(object lst, object item) except -1
    void PyErr_Clear()
    void* PyErr_Occurred()


cdef extern from *:
    """
    /* Set a data descriptor (a __slots__ member) on obj, as descr.__set__(obj, value). */
    static int segstore_descr_set(PyObject *descr, PyObject *obj, PyObject *value) {
        descrsetfunc set = Py_TYPE(descr)->tp_descr_set;
        if (set == NULL) {
            PyErr_SetString(PyExc_TypeError, "setters must be data descriptors");
            return -1;
        }
        return set(descr, obj, value);
    }
    static PyObject *segstore_new_instance(PyObject *type, PyObject *no_args) {
        return ((PyTypeObject *)type)->tp_new((PyTypeObject *)type, no_args, NULL);
    }
    """
    int descr_set "segstore_descr_set"(object descr, object obj, object value) except -1
    object new_instance "segstore_new_instance"(object type, object no_args)


cdef class LogRowBuffer:
    """Header rows (FORMAT.md 7.2) and values of the entries a store has buffered.

    :meth:`add` decodes an app_log value's partition header (FORMAT.md 7.1), assigns or
    checks its partition index against ``next_indices`` (a dict partition id -> next
    index, absent = 1, which it advances: invariant 4) and appends the row and the value.
    Anything it does not accept it leaves unchanged and reports as ``ROW_SLOW``, so the
    caller's Python twin raises the precise error (or, for numbers beyond a u64, does
    the work itself and calls :meth:`add_row`).
    """

    cdef bytearray _rows
    cdef Py_ssize_t _count
    cdef uint64_t _partition_count
    cdef readonly list values
    cdef public dict next_indices

    def __cinit__(self, long long partition_count, dict next_indices,
                  Py_ssize_t capacity=4096):
        if partition_count < 1 or partition_count > _NO_PARTITION:
            raise ValueError(f"partition_count {partition_count} is outside [1, 2**32 - 1]")
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._rows = bytearray(capacity * _ROW)
        self._count = 0
        self._partition_count = <uint64_t>partition_count
        self.values = []
        self.next_indices = next_indices

    def __len__(self):
        return self._count

    cdef unsigned char* _next_row(self) except NULL:
        # The next free row; grows into a new array, never in place (a rows() view of
        # the old one may still be exported).
        cdef Py_ssize_t size = len(self._rows)
        cdef bytearray grown
        if (self._count + 1) * _ROW > size:
            grown = bytearray(2 * size)
            grown[:size] = self._rows
            self._rows = grown
        return <unsigned char*>(<char*>self._rows) + self._count * _ROW

    cdef Py_ssize_t _put(self, unsigned char* row, uint64_t term, uint64_t timestamp_us,
                         uint64_t partition_index, uint32_t partition_id,
                         unsigned char val_type, object value) except -1:
        PyList_Append(self.values, value)
        store_u64(row, term)
        store_u64(row + 8, timestamp_us)
        store_u64(row + 16, partition_index)
        store_u32(row + 24, partition_id)
        row[28] = val_type
        row[29] = 0
        row[30] = 0
        row[31] = 0
        self._count += 1
        return self._count

    def add(self, uint64_t term, uint64_t timestamp_us, int val_type, object value):
        """Buffer one entry (``val_type`` 1 is app_log): the new count, or ``ROW_SLOW``."""
        return self._add(term, timestamp_us, val_type, value)

    cdef Py_ssize_t _add(self, uint64_t term, uint64_t timestamp_us, int val_type,
                         object value) except -2:
        if val_type < 0 or val_type > 255:
            raise ValueError(f"val_type {val_type} is not a u8")
        cdef unsigned char* row = self._next_row()
        if val_type != _APP_LOG:
            return self._put(row, term, timestamp_us, 0, _NO_PARTITION,
                             <unsigned char>val_type, value)
        if not PyBytes_CheckExact(value) or PyBytes_GET_SIZE(value) < _PARTITION_HDR:
            return _SLOW
        cdef const unsigned char* header = <const unsigned char*>PyBytes_AS_STRING(value)
        if header[0] != 0x53 or header[1] != 0x50 or header[2] != 1 or header[3] != 0:
            return _SLOW  # magic "SP", version 1, flags 0
        cdef uint32_t partition_id = load_u32(header + 4)
        cdef uint64_t partition_index = load_u64(header + 8)
        if partition_id == _NO_PARTITION or partition_id >= self._partition_count:
            return _SLOW
        cdef object key = PyLong_FromUnsignedLong(partition_id)
        cdef void* found = PyDict_GetItem(self.next_indices, key)
        cdef uint64_t expected = 1
        if found != NULL:
            expected = PyLong_AsUnsignedLongLong(<object>found)
            if expected == <uint64_t>-1 and PyErr_Occurred() != NULL:
                PyErr_Clear()
                return _SLOW
        if partition_index == 0:
            partition_index = expected
        elif partition_index != expected:
            return _SLOW
        if partition_index == <uint64_t>-1:
            return _SLOW  # its successor does not fit a u64
        PyDict_SetItem(self.next_indices, key, PyLong_FromUnsignedLongLong(partition_index + 1))
        return self._put(row, term, timestamp_us, partition_index, partition_id, _APP_LOG,
                         value)

    def add_row(self, uint64_t term, uint64_t timestamp_us, uint64_t partition_index,
                uint32_t partition_id, unsigned char val_type, object value):
        """Buffer one entry whose row the caller computed; return the new count."""
        return self._put(self._next_row(), term, timestamp_us, partition_index,
                         partition_id, val_type, value)

    def rows(self):
        """A memoryview of the buffered rows (``len(self) * 32`` bytes)."""
        return memoryview(self._rows)[:self._count * _ROW]

    def truncate(self, Py_ssize_t count):
        """Keep the first ``count`` entries (the caller rewinds ``next_indices``)."""
        if count < 0 or count > self._count:
            raise ValueError(f"cannot keep {count} of {self._count} rows")
        del self.values[count:]
        self._count = count


cdef class EntryAppender:
    """A log store's per-entry ``append`` (NuRaft's hot path) as one compiled call.

    For an entry of exactly ``entry_type`` whose bytes value is at most
    ``max_value_bytes`` long, while ``writable`` is true: under ``lock``, buffers it
    with :meth:`LogRowBuffer.add` into ``rows`` and ``pending``, calls ``flush_full()``
    once ``full_count`` entries are buffered, and returns the entry's index,
    ``log_last_index`` plus the buffered count. Every other entry, including those
    ``add`` sends to its Python twin, goes to ``slow(entry)``, the store's Python
    ``append``, which handles or refuses it; its result is returned as is.

    ``log_last_index`` is the last index of the log the buffer goes to: the store sets
    it whenever that moves (a property read here cost a fifth of the call).
    """

    cdef LogRowBuffer _rows
    cdef list _pending
    cdef object _entry_type
    cdef object _acquire
    cdef object _release
    cdef public long long log_last_index
    cdef Py_ssize_t _max_value_bytes
    cdef Py_ssize_t _full_count
    cdef object _slow
    cdef object _flush_full
    cdef public bint writable

    def __cinit__(self, LogRowBuffer rows not None, list pending not None, type entry_type,
                  object lock, long long log_last_index, Py_ssize_t max_value_bytes,
                  Py_ssize_t full_count, object slow, object flush_full):
        self._rows = rows
        self._pending = pending
        self._entry_type = entry_type
        self._acquire = lock.acquire  # (bound once: a lookup per call costs more)
        self._release = lock.release
        self.log_last_index = log_last_index
        self._max_value_bytes = max_value_bytes
        self._full_count = full_count
        self._slow = slow
        self._flush_full = flush_full
        self.writable = True

    def append(self, object entry):
        """Buffer ``entry``; return its index (see the class docstring)."""
        if type(entry) is not self._entry_type or not self.writable:
            return self._slow(entry)
        cdef object value = entry.value
        if not PyBytes_CheckExact(value) or PyBytes_GET_SIZE(value) > self._max_value_bytes:
            return self._slow(entry)
        cdef Py_ssize_t count
        self._acquire()
        try:
            if not self.writable:  # (closed or failed since the check above)
                return self._slow(entry)
            count = self._rows._add(entry.term, entry.timestamp_us, entry.val_type, value)
            if count == _SLOW:
                return self._slow(entry)  # (the lock is reentrant)
            PyList_Append(self._pending, entry)
            index = self.log_last_index + count
            if count >= self._full_count:
                self._flush_full()
            return index
        finally:
            self._release()


def build_log_entries(object entry_type, tuple setters, headers, list values,
                      tuple val_types):
    """Entries from header rows (FORMAT.md 7.2) and values, built without ``__init__``.

    Each entry is ``entry_type.__new__(entry_type)`` with the data descriptors
    ``setters`` = (term, value, val_type, timestamp_us) set from row k and ``values[k]``;
    ``val_types[b]`` is the object stored for val_type byte b (None: not a known type,
    ValueError). Meant for rows the store wrote after validating the entry.
    """
    if not isinstance(entry_type, type):
        raise TypeError("entry_type must be a type")
    if len(setters) != 4:
        raise ValueError("setters must be (term, value, val_type, timestamp_us)")
    if len(val_types) != 256:
        raise ValueError("val_types must have 256 items")
    cdef Py_buffer view
    _acquire(headers, &view, False, "headers")
    cdef list entries
    cdef Py_ssize_t k, n = len(values)
    cdef const unsigned char* row
    cdef object entry, kind
    cdef object set_term = setters[0], set_value = setters[1]
    cdef object set_type = setters[2], set_timestamp = setters[3]
    cdef tuple no_args = ()
    try:
        if view.len != n * _ROW:
            raise ValueError(f"headers hold {view.len} bytes, not {n} rows of {_ROW}")
        entries = [None] * n
        for k in range(n):
            row = <const unsigned char*>view.buf + k * _ROW
            kind = val_types[row[28]]
            if kind is None:
                raise ValueError(f"row {k} has unknown val_type {row[28]}")
            entry = new_instance(entry_type, no_args)
            descr_set(set_term, entry, PyLong_FromUnsignedLongLong(load_u64(row)))
            descr_set(set_value, entry, values[k])
            descr_set(set_type, entry, kind)
            descr_set(set_timestamp, entry, PyLong_FromUnsignedLongLong(load_u64(row + 8)))
            entries[k] = entry
        return entries
    finally:
        PyBuffer_Release(&view)
