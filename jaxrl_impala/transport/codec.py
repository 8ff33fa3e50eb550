"""A versioned, self-describing binary frame for numpy arrays: the only thing that crosses a
process boundary in jaxrl_impala. Never pickle: the learner must be safe against a hostile
writer, so `decode` validates every byte of structure before it builds a single array, and
given a `FrameSpec` also the metadata and the values the consumer relies on. It raises only
`FrameError`, whose ``reason`` (:data:`REJECT_REASONS`) the transports count.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic  b"JRIF"
    4       2     u16 format version (currently 1)
    6       2     u16 flags (must be 0)
    8       4     u32 header length H (bytes of UTF-8 JSON)
    12      4     u32 crc32 (zlib.crc32) of bytes [24, end): header, zero padding, payload
    16      8     u64 payload length P
    24      H     header: {"fields": [{"name", "dtype", "shape", "offset", "nbytes"}, ...],
                           "meta": {str: int}}
    ...           zero padding up to the next multiple of 8
    D       P     payload: raw little-endian C-contiguous buffers; `offset` is relative to D
                  and a multiple of 8, so zero-copy views are aligned whenever the frame is.

A frame is exactly ``D + P`` bytes long; trailing bytes are an error (callers slice).
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Frame",
    "FrameError",
    "FrameSpec",
    "FrameTooLargeError",
    "REJECT_REASONS",
    "decode",
    "encode",
    "encode_into",
    "encoded_size",
]

MAGIC = b"JRIF"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHHIIQ")
PREFIX_BYTES = _PREFIX.size  # 24
ALIGN = 8

# Bounds that keep a hostile header from costing more than a bounded amount of work.
MAX_HEADER_BYTES = 1 << 20
MAX_FIELDS = 256
MAX_NAME_LEN = 64
MAX_RANK = 8
MAX_META = 64
MAX_FIELD_BYTES = 1 << 40  # any single field; the payload bound below is the binding one
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# The allow-list. Every dtype is pinned to little-endian; the header names are numpy's
# canonical names, so ">f4", "<f4", "O", "V8", "U3" ... are all rejected by lookup.
_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool",
        "int8",
        "uint8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    )
}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FIELD_KEYS = frozenset({"name", "dtype", "shape", "offset", "nbytes"})
_HEADER_KEYS = frozenset({"fields", "meta"})


# Why a frame was rejected, coarsest first (each a ``frames_rejected_<reason>`` counter):
#   malformed: not a valid frame (magic, version, length, crc, header, layout);
#   spec: a valid frame whose fields, dtypes or shapes differ from the consumer's spec;
#   meta: metadata the spec requires is missing, not an int or out of range;
#   values: a bool byte other than 0 or 1, a non-finite float or an out-of-range int where
#     the spec asks for finite / bounded values.
# "oversized": discarded before decoding (the Redis pop script drops elements over the
# frame bound on the server).
REJECT_REASONS = ("malformed", "spec", "meta", "values", "oversized")


class FrameError(ValueError):
    """A frame failed validation; the message names the field or the problem in one line.

    Attributes:
      reason: one of :data:`REJECT_REASONS`.
    """

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


class FrameTooLargeError(ValueError):
    """`encode_into` was given a buffer smaller than the encoded frame."""


@dataclass(frozen=True, eq=False)
class Frame:
    """A decoded frame.

    Attributes:
      arrays: name -> array. With ``decode(copy=False)`` these are read-only zero-copy views
        into the decoded buffer (valid only while that buffer is); with ``copy=True`` they are
        private writable copies.
      meta: small integer metadata (policy version, actor id, ...).
    """

    arrays: dict[str, np.ndarray]
    meta: dict[str, int]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


@dataclass(frozen=True)
class FrameSpec:
    """What a consumer accepts (e.g. one Unroll layout): the exact field set, dtypes and
    shapes, the metadata it needs, and the values it checks.

    Attributes:
      fields: name -> (little-endian dtype, shape).
      meta: required meta key -> its inclusive ``(low, high)`` range (other keys may come too).
      finite: float fields whose every value must be finite.
      ranges: integer field -> inclusive ``(low, high)`` bounds; each bound an int or a
        sequence broadcast over the field's last axis (a MultiDiscrete's ``nvec - 1``).
    """

    fields: Mapping[str, tuple[np.dtype, tuple[int, ...]]]
    meta: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    finite: frozenset[str] = frozenset()
    ranges: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls,
        example: Mapping[str, Any],
        *,
        meta: Mapping[str, tuple[int, int]] | None = None,
        finite: Iterable[str] = (),
        ranges: Mapping[str, tuple[Any, Any]] | None = None,
    ) -> FrameSpec:
        """The spec that `example` (name -> array-like) satisfies, plus the given checks.

        Raises:
          ValueError: a `finite` field that is not a float field of `example`, or a `ranges`
            field that is not an integer one or whose bounds do not broadcast over it.
        """
        fields = {}
        for name, value in example.items():
            arr = np.asarray(value)
            fields[name] = (_wire_dtype(name, arr.dtype), tuple(int(d) for d in arr.shape))
        finite, ranges = frozenset(finite), dict(ranges or {})
        for names, kind, what in ((finite, "f", "a float"), (ranges, "iu", "an integer")):
            for name in names:
                if name not in fields or fields[name][0].kind not in kind:
                    raise ValueError(f"spec: {name!r} is not {what} field of the example")
        for name, (low, high) in ranges.items():  # bounds must broadcast over the field
            np.broadcast_shapes(fields[name][1], np.shape(low), np.shape(high))
        return cls(fields, dict(meta or {}), finite, ranges)

    def check(self, frame_fields: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        """Raise FrameError unless `frame_fields` matches this spec exactly."""
        missing = sorted(set(self.fields) - set(frame_fields))
        extra = sorted(set(frame_fields) - set(self.fields))
        if missing or extra:
            raise FrameError(
                f"frame fields do not match spec: missing {missing}, extra {extra}", "spec"
            )
        for name, (dtype, shape) in self.fields.items():
            got_dtype, got_shape = frame_fields[name]
            if got_dtype != dtype:
                raise FrameError(
                    f"field {name!r}: dtype {got_dtype.name}, spec wants {dtype.name}", "spec"
                )
            if tuple(got_shape) != tuple(shape):
                raise FrameError(
                    f"field {name!r}: shape {list(got_shape)}, spec wants {list(shape)}", "spec"
                )

    def check_meta(self, meta: Mapping[str, int]) -> None:
        """Raise FrameError unless every required meta key is there and in its range (the
        decoder has already made every value an int64)."""
        for key, (low, high) in self.meta.items():
            if key not in meta:
                raise FrameError(f"meta {key!r} is missing", "meta")
            if not low <= meta[key] <= high:
                raise FrameError(f"meta {key!r}: {meta[key]} is outside [{low}, {high}]", "meta")

    def check_values(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Raise FrameError where a `finite` field holds NaN or inf, or a `ranges` field a
        value outside its bounds."""
        for name in sorted(self.finite):
            if not np.isfinite(arrays[name]).all():
                raise FrameError(f"field {name!r}: non-finite values", "values")
        for name, (low, high) in self.ranges.items():
            a = arrays[name]
            if a.size and ((a < np.asarray(low)).any() or (a > np.asarray(high)).any()):
                raise FrameError(f"field {name!r}: values outside [{low}, {high}]", "values")


# ----------------------------------------------------------------------------- encoding


def _wire_dtype(name: str, dtype: np.dtype) -> np.dtype:
    wire = _DTYPES.get(dtype.name) if dtype.kind in "biuf" else None
    if wire is None:
        allowed = ", ".join(_DTYPES)
        raise TypeError(f"field {name!r}: dtype {dtype} cannot be framed; use one of {allowed}")
    return wire


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _plan(arrays: Mapping[str, Any], meta: Mapping[str, int] | None):
    """Validate inputs and lay them out: (header bytes, [(array, wire dtype, offset)], P)."""
    if len(arrays) > MAX_FIELDS:
        raise ValueError(f"too many fields: {len(arrays)} > {MAX_FIELDS}")
    fields, parts, offset = [], [], 0
    for name, value in arrays.items():
        if not isinstance(name, str) or len(name) > MAX_NAME_LEN or not _NAME_RE.match(name):
            raise ValueError(
                f"field name {name!r} must be an identifier of <= {MAX_NAME_LEN} chars"
            )
        arr = np.asarray(value)
        if arr.ndim > MAX_RANK:
            raise ValueError(f"field {name!r}: rank {arr.ndim} > {MAX_RANK}")
        wire = _wire_dtype(name, arr.dtype)
        fields.append(
            {
                "name": name,
                "dtype": wire.name,
                "shape": [int(d) for d in arr.shape],
                "offset": offset,
                "nbytes": int(arr.nbytes),
            }
        )
        parts.append((arr, wire, offset))
        offset = _align(offset + arr.nbytes)
    meta_out = {}
    for key, value in (meta or {}).items():
        if not isinstance(key, str) or len(key) > MAX_NAME_LEN or not _NAME_RE.match(key):
            raise ValueError(f"meta key {key!r} must be an identifier of <= {MAX_NAME_LEN} chars")
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise ValueError(f"meta {key!r}: value {value!r} is not an int")
        if not _INT64_MIN <= int(value) <= _INT64_MAX:
            raise ValueError(f"meta {key!r}: value {value!r} is outside int64")
        meta_out[key] = int(value)
    if len(meta_out) > MAX_META:
        raise ValueError(f"too many meta entries: {len(meta_out)} > {MAX_META}")
    header = json.dumps({"fields": fields, "meta": meta_out}, separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return header, parts, offset


def encoded_size(arrays: Mapping[str, Any], meta: Mapping[str, int] | None = None) -> int:
    """Bytes `encode(arrays, meta)` produces; use it to size transport slots."""
    header, _, payload_len = _plan(arrays, meta)
    return _align(PREFIX_BYTES + len(header)) + payload_len


def encode_into(
    buf: memoryview | bytearray, arrays: Mapping[str, Any], meta: Mapping[str, int] | None = None
) -> int:
    """Encode straight into the writable buffer `buf`; returns the bytes written.

    Raises:
      FrameTooLargeError: `buf` is too small (nothing useful is written).
      TypeError / ValueError: a dtype outside the allow-list, a bad name or meta value.
    """
    header, parts, payload_len = _plan(arrays, meta)
    data_start = _align(PREFIX_BYTES + len(header))
    total = data_start + payload_len
    mv = memoryview(buf).cast("B")
    if mv.readonly:
        raise ValueError("encode_into needs a writable buffer")
    if total > mv.nbytes:
        raise FrameTooLargeError(
            f"encoded frame needs {total} bytes but the buffer holds {mv.nbytes}; "
            "raise the slot/capacity size"
        )
    mv[PREFIX_BYTES : PREFIX_BYTES + len(header)] = header
    mv[PREFIX_BYTES + len(header) : data_start] = bytes(data_start - PREFIX_BYTES - len(header))
    end = 0
    for arr, wire, offset in parts:
        start = data_start + offset
        if start > data_start + end:  # zero the alignment gap left by the previous field
            mv[data_start + end : start] = bytes(start - data_start - end)
        if arr.size:
            dst = np.frombuffer(mv, dtype=wire, count=arr.size, offset=start).reshape(arr.shape)
            np.copyto(dst, arr, casting="equiv")  # byte-swaps big-endian input
        end = offset + arr.nbytes
    if payload_len > end:
        mv[data_start + end : total] = bytes(payload_len - end)
    crc = zlib.crc32(mv[PREFIX_BYTES:total])
    _PREFIX.pack_into(mv, 0, MAGIC, FORMAT_VERSION, 0, len(header), crc, payload_len)
    return total


def encode(arrays: Mapping[str, Any], meta: Mapping[str, int] | None = None) -> bytes:
    """Encode name -> array (and int metadata) into one self-describing frame."""
    out = bytearray(encoded_size(arrays, meta))
    n = encode_into(out, arrays, meta)
    return bytes(out[:n])


# ----------------------------------------------------------------------------- decoding


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise FrameError(f"header: duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name):
    raise FrameError(f"header: non-finite number {name}")


def _is_int(x) -> bool:
    return type(x) is int  # bool is an int subclass; JSON floats are not ints


def _parse_header(raw: bytes, payload_len: int):
    try:
        obj = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except FrameError:
        raise
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError too
        raise FrameError(f"header is not valid UTF-8 JSON: {type(e).__name__}") from None
    if type(obj) is not dict or set(obj) != _HEADER_KEYS:
        raise FrameError('header must be an object with exactly the keys "fields" and "meta"')
    fields, meta = obj["fields"], obj["meta"]
    if type(fields) is not list or len(fields) > MAX_FIELDS:
        raise FrameError(f'header "fields" must be a list of at most {MAX_FIELDS} entries')
    if type(meta) is not dict or len(meta) > MAX_META:
        raise FrameError(f'header "meta" must be an object of at most {MAX_META} entries')
    for key, value in meta.items():
        if len(key) > MAX_NAME_LEN or not _NAME_RE.match(key):
            raise FrameError(f"meta key {key[:MAX_NAME_LEN]!r} is not an identifier")
        if not _is_int(value) or not _INT64_MIN <= value <= _INT64_MAX:
            raise FrameError(f"meta {key[:MAX_NAME_LEN]!r}: value is not an int64")

    layout = []  # (name, dtype, shape, offset, nbytes)
    for i, f in enumerate(fields):
        if type(f) is not dict or set(f) != _FIELD_KEYS:
            raise FrameError(f"field #{i}: must be an object with keys {sorted(_FIELD_KEYS)}")
        name, dtype_name, shape = f["name"], f["dtype"], f["shape"]
        offset, nbytes = f["offset"], f["nbytes"]
        if type(name) is not str or len(name) > MAX_NAME_LEN or not _NAME_RE.match(name):
            raise FrameError(f"field #{i}: name must be an identifier of <= {MAX_NAME_LEN} chars")
        if type(dtype_name) is not str or dtype_name not in _DTYPES:
            raise FrameError(f"field {name!r}: dtype {str(dtype_name)[:16]!r} is not allowed")
        dtype = _DTYPES[dtype_name]
        if type(shape) is not list or len(shape) > MAX_RANK:
            raise FrameError(f"field {name!r}: shape must be a list of at most {MAX_RANK} ints")
        if not all(_is_int(d) and 0 <= d <= MAX_FIELD_BYTES for d in shape):
            raise FrameError(f"field {name!r}: shape entries must be ints in [0, 2**40]")
        if not _is_int(offset) or not _is_int(nbytes) or offset < 0 or nbytes < 0:
            raise FrameError(f"field {name!r}: offset and nbytes must be non-negative ints")
        count = math.prod(shape)  # Python ints: no overflow, and every factor is bounded
        if count * dtype.itemsize != nbytes:
            raise FrameError(f"field {name!r}: nbytes {nbytes} != shape x itemsize")
        if offset % ALIGN:
            raise FrameError(f"field {name!r}: offset {offset} is not {ALIGN}-byte aligned")
        if offset + nbytes > payload_len:
            raise FrameError(
                f"field {name!r}: bytes [{offset}, {offset + nbytes}) lie outside the payload"
            )
        # A zero-size field passes the checks above whatever its other sides; numpy still
        # refuses a shape whose non-zero sides multiply past its index range.
        if math.prod(max(d, 1) for d in shape) * dtype.itemsize > MAX_FIELD_BYTES:
            raise FrameError(f"field {name!r}: shape {shape} spans more than 2**40 bytes")
        layout.append((name, dtype, tuple(shape), offset, nbytes))

    if len({entry[0] for entry in layout}) != len(layout):
        raise FrameError("header: duplicate field name")
    spans = sorted((off, off + n, name) for name, _, _, off, n in layout if n)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            raise FrameError(f"fields {name_a!r} and {name_b!r} overlap")
    return layout, dict(meta)


def _arrays(mv: memoryview, data_start: int, layout, copy: bool) -> dict[str, np.ndarray]:
    """The fields' arrays over ``mv``; a bool field must hold only the bytes 0 and 1."""
    arrays = {}
    for name, dtype, shape, offset, nbytes in layout:
        count = nbytes // dtype.itemsize
        if dtype.kind == "b" and count:
            raw = np.frombuffer(mv, dtype=np.uint8, count=count, offset=data_start + offset)
            if raw.max() > 1:  # any other byte is no numpy bool: `1 - (t | f)` goes negative
                raise FrameError(f"field {name!r}: bool bytes other than 0 and 1", "values")
        arr = np.frombuffer(mv, dtype=dtype, count=count, offset=data_start + offset)
        arr = arr.reshape(shape)
        if copy:
            arr = arr.copy()
        else:
            arr.flags.writeable = False
        arrays[name] = arr
    return arrays


def decode(buf, *, spec: FrameSpec | None = None, copy: bool = False) -> Frame:
    """Validate and decode one frame (bytes, bytearray, memoryview, ...) of exactly its length.

    Args:
      buf: the frame; any extra trailing byte is an error.
      spec: if given, the field set, dtypes and shapes must equal it exactly, the metadata it
        requires must be there and in range, and its value checks must pass.
      copy: False -> read-only zero-copy views into `buf`; True -> private writable copies.

    Raises:
      FrameError: on any structural, checksum, spec, metadata or value mismatch (and
        nothing else); its ``reason`` says which. Structure is checked before any array is
        built.
    """
    try:
        mv = memoryview(buf).cast("B")
    except TypeError as e:
        raise FrameError(f"frame buffer is not a contiguous byte buffer: {e}") from None
    size = mv.nbytes
    if size < PREFIX_BYTES:
        raise FrameError(f"frame of {size} bytes is shorter than the {PREFIX_BYTES}-byte prefix")
    magic, version, flags, header_len, crc, payload_len = _PREFIX.unpack_from(mv, 0)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise FrameError(f"unsupported frame version {version}, expected {FORMAT_VERSION}")
    if flags != 0:
        raise FrameError(f"unsupported frame flags {flags:#x}")
    if header_len > MAX_HEADER_BYTES:
        raise FrameError(f"header length {header_len} exceeds {MAX_HEADER_BYTES}")
    data_start = _align(PREFIX_BYTES + header_len)
    if data_start + payload_len != size:
        raise FrameError(
            f"frame length {size} != {data_start + payload_len} announced by its prefix "
            "(truncated or trailing bytes)"
        )
    if zlib.crc32(mv[PREFIX_BYTES:size]) != crc:
        raise FrameError("crc32 mismatch: frame corrupted")
    layout, meta = _parse_header(bytes(mv[PREFIX_BYTES : PREFIX_BYTES + header_len]), payload_len)
    if spec is not None:
        spec.check({name: (dtype, shape) for name, dtype, shape, _, _ in layout})
        spec.check_meta(meta)
    try:
        arrays = _arrays(mv, data_start, layout, copy)
    except (ValueError, TypeError, OverflowError) as e:
        if isinstance(e, FrameError):
            raise
        # The header checks should leave numpy nothing to refuse; should one slip through,
        # the caller still gets the one error it handles.
        raise FrameError(f"frame arrays cannot be built: {e}") from None
    if spec is not None:
        spec.check_values(arrays)
    return Frame(arrays=arrays, meta=meta)
