"""The frame codec: round trips, and every kind of corrupt or hostile input is a FrameError."""

import json
import math
import os
import pickle  # only to build a hostile payload; the package never imports it
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrl_impala.transport.codec import (
    MAGIC,
    Frame,
    FrameError,
    FrameSpec,
    FrameTooLargeError,
    decode,
    encode,
    encode_into,
    encoded_size,
)


def _example():
    rng = np.random.default_rng(0)
    return {
        "obs": rng.normal(size=(5, 3, 7)).astype(np.float32),
        "pixels": rng.integers(0, 255, size=(5, 3, 4, 4, 2), dtype=np.uint8),
        "actions": rng.integers(-3, 3, size=(4, 3), dtype=np.int64),
        "terminated": rng.random((4, 3)) < 0.3,
        "logits": rng.normal(size=(4, 3, 5)).astype(np.float16),
        "empty": np.zeros((0, 3), np.float64),
        "scalar": np.array(7, np.int32),  # a 0-d array
        "small": np.array([1, -2], np.int8),
        "mid": np.array([300, -300], np.int16),
    }


def _raw_frame(header, payload=b"", *, magic=MAGIC, version=1, flags=0, crc=None):
    """A frame with arbitrary header (object or raw bytes) and a *correct* crc, so tests reach
    the header validation behind the checksum."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = h + bytes((-(24 + len(h))) % 8) + payload
    crc = zlib.crc32(body) if crc is None else crc
    return struct.pack("<4sHHIIQ", magic, version, flags, len(h), crc, len(payload)) + body


def _field(name="x", dtype="float32", shape=(2,), offset=0, nbytes=None):
    if nbytes is None:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset, "nbytes": nbytes}


def _assert_same(frame: Frame, arrays, meta):
    assert set(frame.arrays) == set(arrays)
    for name, want in arrays.items():
        got = frame.arrays[name]
        assert got.dtype == np.asarray(want).dtype.newbyteorder("<"), name
        assert got.shape == np.shape(want), name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert frame.meta == dict(meta or {})


# ----------------------------------------------------------------------------- round trips


def test_round_trip_mixed_dtypes_shapes_zero_size_and_scalars():
    arrays, meta = _example(), {"policy_version": 12, "actor_id": 3, "neg": -(2**63)}
    frame = decode(encode(arrays, meta))
    _assert_same(frame, arrays, meta)
    assert frame.arrays["scalar"].shape == () and frame.arrays["empty"].shape == (0, 3)


def test_zero_copy_views_are_read_only_and_copies_are_private():
    arrays = _example()
    buf = bytearray(encode(arrays, {"v": 1}))
    views = decode(buf).arrays
    assert not views["obs"].flags.writeable
    buf_copy = decode(bytes(buf), copy=True).arrays
    assert buf_copy["obs"].flags.writeable
    # Zero-copy: the view sees a change to the underlying buffer; the copy does not.
    offset = buf.index(arrays["obs"].tobytes()[:16])
    buf[offset : offset + 4] = np.float32(123.0).tobytes()
    assert views["obs"].flat[0] == np.float32(123.0)
    assert buf_copy["obs"].flat[0] == arrays["obs"].flat[0]


def test_big_endian_and_non_contiguous_inputs_are_normalised():
    base = np.arange(24, dtype=">f8").reshape(4, 6)
    arrays = {"be": base, "strided": np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2].T}
    frame = decode(encode(arrays))
    assert frame.arrays["be"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(frame.arrays["be"], base)
    np.testing.assert_array_equal(frame.arrays["strided"], arrays["strided"])


def test_encode_into_a_slot_is_aligned_sized_and_checks_fit():
    arrays, meta = _example(), {"v": 2}
    size = encoded_size(arrays, meta)
    slot = np.zeros(size + 100, np.uint8)  # 8-byte aligned like a shm slot
    slot[:] = 0xAB  # stale bytes from a previous frame must not matter
    n = encode_into(memoryview(slot), arrays, meta)
    assert n == size == len(encode(arrays, meta))
    frame = decode(memoryview(slot)[:n])
    _assert_same(frame, arrays, meta)
    for name, arr in frame.arrays.items():
        assert arr.ctypes.data % 8 == 0, name
    with pytest.raises(FrameTooLargeError, match="needs"):
        encode_into(memoryview(slot)[: size - 1], arrays, meta)


@pytest.mark.parametrize(
    "arrays, meta, match",
    [
        ({"x": np.array([object()])}, None, "dtype"),
        ({"x": np.zeros(2, np.complex64)}, None, "dtype"),
        ({"x": np.array(["a"])}, None, "dtype"),
        ({"x": np.zeros(2, np.uint64)}, None, "dtype"),
        ({"not an identifier": np.zeros(2)}, None, "identifier"),
        ({"x": np.zeros((1,) * 9)}, None, "rank"),
        ({"x": np.zeros(2)}, {"v": 1.5}, "int"),
        ({"x": np.zeros(2)}, {"v": True}, "int"),
        ({"x": np.zeros(2)}, {"v": 2**64}, "int64"),
    ],
)
def test_encode_refuses_what_decode_would_reject(arrays, meta, match):
    with pytest.raises((TypeError, ValueError), match=match):
        encode(arrays, meta)


# ----------------------------------------------------------------------------- corruption


def test_bad_magic_version_flags_and_trailing_bytes():
    frame = bytearray(encode(_example(), {"v": 1}))
    for offset, value, match in [
        (0, b"XRIF", "magic"),
        (4, struct.pack("<H", 2), "version"),
        (6, struct.pack("<H", 1), "flags"),
    ]:
        bad = bytearray(frame)
        bad[offset : offset + len(value)] = value
        with pytest.raises(FrameError, match=match):
            decode(bad)
    with pytest.raises(FrameError, match="length"):
        decode(bytes(frame) + b"\0")


def test_truncation_at_every_cut_point_is_rejected():
    frame = encode({"a": np.arange(10, dtype=np.float32), "b": np.array(3)}, {"v": 1})
    for cut in range(len(frame)):
        with pytest.raises(FrameError):
            decode(frame[:cut])


def test_flipped_byte_anywhere_after_the_prefix_fails_the_crc():
    frame = encode({"a": np.arange(10, dtype=np.float32)}, {"v": 1})
    for pos in range(24, len(frame)):
        bad = bytearray(frame)
        bad[pos] ^= 0x40
        with pytest.raises(FrameError, match="crc"):
            decode(bad)


_GOOD = {"fields": [_field()], "meta": {}}


@pytest.mark.parametrize(
    "header, payload_len, match",
    [
        (b"\xff\xfe not utf-8", 8, "JSON"),
        (b"{not json", 8, "JSON"),
        (b"[" * 50_000 + b"]" * 50_000, 8, "JSON"),  # deep nesting: RecursionError inside
        (b'{"fields": [], "meta": {}, "meta": {}}', 8, "duplicate"),
        (b'{"fields": [], "meta": {"v": NaN}}', 8, "non-finite"),
        ([], 8, "exactly the keys"),
        ({"fields": [_field()]}, 8, "exactly the keys"),
        ({**_GOOD, "extra": 1}, 8, "exactly the keys"),
        ({"fields": {"x": 1}, "meta": {}}, 8, "fields"),
        ({"fields": [], "meta": []}, 8, "meta"),
        ({"fields": [], "meta": {"v": 1.0}}, 8, "int64"),
        ({"fields": [], "meta": {"v": True}}, 8, "int64"),
        ({"fields": [], "meta": {"v": "1"}}, 8, "int64"),
        ({"fields": [], "meta": {"v": 2**70}}, 8, "int64"),
        ({"fields": [], "meta": {"bad key": 1}}, 8, "identifier"),
        ({"fields": [{**_field(), "extra": 0}], "meta": {}}, 8, "keys"),
        ({"fields": [[1, 2]], "meta": {}}, 8, "keys"),
        ({"fields": [_field(name="__import__('os')")], "meta": {}}, 8, "identifier"),
        ({"fields": [_field(name="x" * 65)], "meta": {}}, 8, "identifier"),
        ({"fields": [_field(name=3)], "meta": {}}, 8, "identifier"),
        ({"fields": [{**_field(), "dtype": "O"}], "meta": {}}, 8, "not allowed"),
        ({"fields": [{**_field(), "dtype": ">f4"}], "meta": {}}, 8, "not allowed"),
        ({"fields": [{**_field(), "dtype": "<f4"}], "meta": {}}, 8, "not allowed"),
        ({"fields": [{**_field(), "dtype": "float128"}], "meta": {}}, 8, "not allowed"),
        ({"fields": [{**_field(), "dtype": "V8"}], "meta": {}}, 8, "not allowed"),
        ({"fields": [{**_field(), "dtype": 5}], "meta": {}}, 8, "not allowed"),
        ({"fields": [{**_field(), "shape": [2.0]}], "meta": {}}, 8, "shape"),
        ({"fields": [{**_field(), "shape": [True, True]}], "meta": {}}, 8, "shape"),
        ({"fields": [{**_field(), "shape": [-2]}], "meta": {}}, 8, "shape"),
        ({"fields": [{**_field(), "shape": "2"}], "meta": {}}, 8, "shape"),
        ({"fields": [_field(shape=(1,) * 9)], "meta": {}}, 8, "shape"),
        ({"fields": [_field(shape=(2**40, 2**40, 2**40))], "meta": {}}, 8, "outside"),
        # zero bytes, but numpy cannot index it: a FrameError, not numpy's ValueError
        ({"fields": [_field(shape=(2**40, 2**40, 0))], "meta": {}}, 8, "spans"),
        ({"fields": [_field(dtype="float64", shape=(0, 2**20, 2**18))], "meta": {}}, 8, "spans"),
        ({"fields": [{**_field(), "shape": [2**50]}], "meta": {}}, 8, "shape"),
        (
            {"fields": [{**_field(), "shape": [2**39, 2**39], "nbytes": 8}], "meta": {}},
            8,
            "shape x itemsize",
        ),
        ({"fields": [_field(nbytes=4)], "meta": {}}, 8, "nbytes"),
        ({"fields": [_field(offset=4, shape=(1,))], "meta": {}}, 8, "aligned"),
        ({"fields": [_field(offset=8)], "meta": {}}, 8, "outside"),
        ({"fields": [_field(offset=-8)], "meta": {}}, 8, "non-negative"),
        ({"fields": [_field(offset="0")], "meta": {}}, 8, "non-negative"),
        ({"fields": [_field("a", shape=(4,)), _field("b", offset=8)], "meta": {}}, 16, "overlap"),
        ({"fields": [_field("a"), _field("a", offset=8)], "meta": {}}, 16, "duplicate"),
    ],
)
def test_hostile_headers_with_valid_crc_are_rejected(header, payload_len, match):
    with pytest.raises(FrameError, match=match):
        decode(_raw_frame(header, bytes(payload_len)))


def test_huge_announced_sizes_are_rejected_before_any_allocation():
    with pytest.raises(FrameError, match="header length"):
        decode(struct.pack("<4sHHIIQ", MAGIC, 1, 0, 2**32 - 1, 0, 0))
    with pytest.raises(FrameError, match="length"):
        decode(struct.pack("<4sHHIIQ", MAGIC, 1, 0, 2, 0, 2**63) + b"{}" + bytes(6))


def test_raw_frame_helper_builds_valid_frames():
    # Guards the test above: the same helper with a well-formed header decodes.
    frame = decode(_raw_frame(_GOOD, np.array([1.5, 2.5], np.float32).tobytes()))
    np.testing.assert_array_equal(frame.arrays["x"], [1.5, 2.5])


# ----------------------------------------------------------------------------- spec


def test_spec_accepts_the_exact_layout_and_rejects_any_difference():
    arrays = _example()
    spec = FrameSpec.from_arrays(arrays)
    decode(encode(arrays), spec=spec)
    # Each case must fail for its own reason, named in the message.
    cases = {
        r"missing \['obs'\], extra \[\]": {k: v for k, v in arrays.items() if k != "obs"},
        r"missing \[\], extra \['bonus'\]": {**arrays, "bonus": np.zeros(1)},
        r"missing \['obs'\], extra \['observation'\]": {
            ("observation" if k == "obs" else k): v for k, v in arrays.items()
        },
        r"'obs': dtype float64, spec wants float32": {
            **arrays,
            "obs": arrays["obs"].astype(np.float64),
        },
        r"'obs': shape \[5, 2, 7\], spec wants \[5, 3, 7\]": {
            **arrays,
            "obs": arrays["obs"][:, :2],
        },
        r"'scalar': shape \[1\], spec wants \[\]": {**arrays, "scalar": np.array([7], np.int32)},
    }
    for message, bad in cases.items():
        with pytest.raises(FrameError, match=message) as caught:
            decode(encode(bad), spec=spec)
        assert caught.value.reason == "spec"


def test_a_zero_size_field_with_huge_sides_is_a_frame_error_not_a_value_error():
    """numpy refuses shape [2**40, 2**40, 0] with a ValueError (its sides overflow intp);
    decode must say FrameError, the one error the transports catch."""
    data = _raw_frame({"fields": [_field(shape=(2**40, 2**40, 0))], "meta": {}})
    with pytest.raises(FrameError, match="spans") as caught:
        decode(data)
    assert type(caught.value) is FrameError and caught.value.reason == "malformed"
    # the same sides within bounds still decode
    frame = decode(_raw_frame({"fields": [_field(shape=(2**10, 2**10, 0))], "meta": {}}))
    assert frame.arrays["x"].shape == (2**10, 2**10, 0)


@settings(max_examples=200, deadline=2000)
@given(
    st.lists(st.sampled_from([0, 1, 3, 2**20, 2**31, 2**40]), min_size=1, max_size=8),
    st.sampled_from(["bool", "uint8", "float32", "float64"]),
)
def test_any_zero_size_shape_decodes_or_is_a_frame_error(shape, dtype):
    if 0 not in shape:
        shape = [*shape[:-1], 0]
    try:
        frame = decode(_raw_frame({"fields": [_field(dtype=dtype, shape=shape)], "meta": {}}))
    except FrameError:
        return
    assert frame.arrays["x"].shape == tuple(shape)


def _with_byte(frame: bytes, field_name: str, index: int, value: int) -> bytes:
    """``frame`` with byte ``index`` of field ``field_name`` set to ``value`` (crc fixed)."""
    (_, _, _, header_len, _, _) = struct.unpack_from("<4sHHIIQ", frame)
    header = json.loads(frame[24 : 24 + header_len])
    (entry,) = [f for f in header["fields"] if f["name"] == field_name]
    data = bytearray(frame)
    data[(24 + header_len + 7) // 8 * 8 + entry["offset"] + index] = value
    return _fix_crc(data)


def test_a_bool_byte_other_than_0_or_1_is_rejected_with_or_without_a_spec():
    arrays = {"terminated": np.array([True, False, True]), "r": np.zeros(3, np.float32)}
    frame = encode(arrays)
    for byte in (2, 0x80, 0xFF):
        bad = _with_byte(frame, "terminated", 1, byte)
        for spec in (None, FrameSpec.from_arrays(arrays)):
            with pytest.raises(FrameError, match="'terminated': bool bytes") as caught:
                decode(bad, spec=spec)
            assert caught.value.reason == "values"
    fixed = decode(_with_byte(frame, "terminated", 1, 1))
    np.testing.assert_array_equal(fixed.arrays["terminated"], [True, True, True])


_UNROLL_LIKE = {
    "obs": np.zeros((4, 2, 3), np.float32),
    "actions": np.zeros((3, 2), np.int32),
    "rewards": np.zeros((3, 2), np.float32),
    "truncation_value": np.zeros((3, 2), np.float32),
    "episode_return": np.full((3, 2), np.nan, np.float32),  # NaN by design: not checked
}
_META = {"policy_version": 3, "actor_id": 1, "unroll_index": 7}
_CHECKED = FrameSpec.from_arrays(
    _UNROLL_LIKE,
    meta={"policy_version": (0, 2**63 - 1), "actor_id": (0, 2**31 - 1), "unroll_index": (0, 99)},
    finite=("obs", "rewards", "truncation_value"),
    ranges={"actions": (0, 4)},
)


def test_the_spec_requires_its_meta_keys_in_range():
    decode(encode(_UNROLL_LIKE, _META), spec=_CHECKED)
    decode(encode(_UNROLL_LIKE, {**_META, "extra": -5}), spec=_CHECKED)  # others may come
    cases = {
        "'policy_version' is missing": {k: v for k, v in _META.items() if k != "policy_version"},
        "'actor_id' is missing": {"policy_version": 1},
        "'policy_version': -1 is outside": {**_META, "policy_version": -1},
        "'actor_id': 2147483648 is outside": {**_META, "actor_id": 2**31},
        "'actor_id': -3 is outside": {**_META, "actor_id": -3},
        "'unroll_index': 100 is outside": {**_META, "unroll_index": 100},
    }
    for message, meta in cases.items():
        with pytest.raises(FrameError, match=message) as caught:
            decode(encode(_UNROLL_LIKE, meta), spec=_CHECKED)
        assert caught.value.reason == "meta"
    # Not an int at all: the header parser refuses it before the spec is asked.
    for value in (1.5, "3", True, None):
        header = {"fields": [], "meta": {**_META, "policy_version": value}}
        with pytest.raises(FrameError, match="int64"):
            decode(_raw_frame(header), spec=FrameSpec({}, {"policy_version": (0, 9)}))


@pytest.mark.parametrize(
    "field, index, value, message",
    [
        ("rewards", (1, 0), np.nan, "'rewards': non-finite"),
        ("rewards", (2, 1), -np.inf, "'rewards': non-finite"),
        ("truncation_value", (0, 0), np.inf, "'truncation_value': non-finite"),
        ("obs", (3, 1, 2), np.nan, "'obs': non-finite"),
        ("actions", (0, 1), 5, "'actions': values outside"),
        ("actions", (2, 0), -1, "'actions': values outside"),
    ],
)
def test_the_spec_rejects_non_finite_and_out_of_range_values(field, index, value, message):
    bad = {name: a.copy() for name, a in _UNROLL_LIKE.items()}
    bad[field][index] = value
    with pytest.raises(FrameError, match=message) as caught:
        decode(encode(bad, _META), spec=_CHECKED)
    assert caught.value.reason == "values"
    decode(encode(bad, _META))  # without a spec only the structure is checked


def test_bounds_per_component_broadcast_over_the_last_axis():
    arrays = {"actions": np.array([[0, 2], [1, 0]], np.int64)}
    spec = FrameSpec.from_arrays(arrays, ranges={"actions": (0, (1, 2))})
    decode(encode(arrays), spec=spec)
    with pytest.raises(FrameError, match="outside"):
        decode(encode({"actions": np.array([[2, 0], [0, 0]], np.int64)}), spec=spec)


def test_a_spec_refuses_checks_on_fields_of_the_wrong_kind():
    with pytest.raises(ValueError, match="'actions' is not a float field"):
        FrameSpec.from_arrays(_UNROLL_LIKE, finite=("actions",))
    with pytest.raises(ValueError, match="'rewards' is not an integer field"):
        FrameSpec.from_arrays(_UNROLL_LIKE, ranges={"rewards": (0, 1)})
    with pytest.raises(ValueError, match="'nope' is not a float field"):
        FrameSpec.from_arrays(_UNROLL_LIKE, finite=("nope",))
    with pytest.raises(ValueError, match="broadcast"):  # 3 bounds for 2 components
        FrameSpec.from_arrays(_UNROLL_LIKE, ranges={"actions": (0, (1, 2, 3))})


def test_every_rejection_names_its_reason():
    assert FrameError("x").reason == "malformed"
    for data in (b"", os.urandom(100), _VALID[:-1]):
        with pytest.raises(FrameError) as caught:
            decode(data)
        assert caught.value.reason == "malformed"


# ----------------------------------------------------------------------------- hostile payloads


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_pickle_payload_is_rejected_and_never_executed(tmp_path):
    control, marker = str(tmp_path / "control"), str(tmp_path / "pwned")
    pickle.loads(pickle.dumps(_Exploit(control)))  # the payload is live ...
    assert os.path.exists(control)
    payload = pickle.dumps(_Exploit(marker))
    attempts = [
        payload,  # bare pickle
        MAGIC + payload,  # with our magic in front
        _raw_frame(
            {"fields": [_field("x", "O", (1,), nbytes=len(payload))], "meta": {}},
            payload + bytes(-len(payload) % 8),
        ),  # an "object" field holding it
    ]
    for data in attempts:
        with pytest.raises(FrameError):
            decode(data)
    assert not os.path.exists(marker)  # ... but decode never runs it


# ----------------------------------------------------------------------------- fuzz

_VALID = encode(
    {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, 0], bool),
        "c": np.array(5, np.int64),
    },
    {"v": 9},
)


def _decode_or_frame_error(data: bytes) -> None:
    try:
        frame = decode(data)
    except FrameError:
        return
    # Anything accepted is a well-formed frame: it re-encodes and decodes to equal arrays.
    again = decode(encode(frame.arrays, frame.meta))
    assert again.meta == frame.meta
    for name, arr in frame.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], arr)


def _fix_crc(data: bytearray) -> bytes:
    if len(data) >= 24:
        struct.pack_into("<I", data, 12, zlib.crc32(bytes(data[24:])))
    return bytes(data)


_FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data):
    _decode_or_frame_error(data)
    _decode_or_frame_error(MAGIC + data)


@_FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(_VALID)),
    st.booleans(),
)
def test_fuzz_mutated_valid_frame(edits, cut, fix_crc):
    data = bytearray(_VALID)
    for pos, value in edits:
        data[pos] = value
    data = data[:cut] if cut < len(data) and not fix_crc else data
    # With the crc recomputed the mutation reaches the header parser and the layout checks.
    _decode_or_frame_error(_fix_crc(data) if fix_crc else bytes(data))


_VALID_UNROLL = encode(_UNROLL_LIKE, _META)


@_FUZZ
@given(
    st.lists(st.tuples(st.integers(24, len(_VALID_UNROLL) - 1), st.integers(0, 255)), max_size=4)
)
def test_fuzz_mutated_frames_against_a_spec_are_accepted_or_a_frame_error(edits):
    data = bytearray(_VALID_UNROLL)
    for pos, value in edits:
        data[pos] = value
    try:
        frame = decode(_fix_crc(data), spec=_CHECKED)
    except FrameError as e:
        assert e.reason in ("malformed", "spec", "meta", "values")
        return
    assert np.isfinite(frame.arrays["rewards"]).all()
    assert 0 <= frame.meta["actor_id"] < 2**31


@_FUZZ
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | st.text(max_size=8),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
        ),
        max_leaves=20,
    ),
    st.integers(0, 64),
)
def test_fuzz_arbitrary_json_headers(header, payload_len):
    try:
        raw = json.dumps(header).encode()
    except ValueError:
        return
    _decode_or_frame_error(_raw_frame(raw, bytes(payload_len)))
