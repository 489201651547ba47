"""The numpy <-> Tensor codec: round trips and rejections."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from apexrl.common.v1 import tensor_pb2
from services.common import tensor_codec

WIRE_DTYPES = ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool"]


@given(
    hnp.arrays(
        dtype=st.sampled_from(WIRE_DTYPES).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_every_wire_dtype_round_trips_exactly(array: np.ndarray) -> None:
    decoded = tensor_codec.decode(
        tensor_pb2.Tensor.FromString(tensor_codec.encode(array).SerializeToString())
    )
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_non_contiguous_and_big_endian_arrays_are_sent_as_little_endian_c_order() -> None:
    array = np.arange(12, dtype=">i4").reshape(3, 4).T
    tensor = tensor_codec.encode(array)
    assert tensor.data == np.ascontiguousarray(array, dtype="<i4").tobytes()
    np.testing.assert_array_equal(tensor_codec.decode(tensor), array)


def test_decoding_does_not_copy_the_bytes() -> None:
    tensor = tensor_codec.encode(np.arange(1000, dtype=np.float32))
    decoded = tensor_codec.decode(tensor)
    assert not decoded.flags.owndata
    assert not decoded.flags.writeable


@pytest.mark.parametrize("dtype", [np.complex64, np.uint16, np.object_, np.dtype("U3")])
def test_dtypes_the_wire_does_not_carry_are_refused_on_encode(dtype: type) -> None:
    with pytest.raises(TypeError, match="cannot be sent"):
        tensor_codec.encode(np.zeros(2, dtype=dtype))


def test_an_unspecified_or_unknown_dtype_is_rejected_naming_the_tensor() -> None:
    for dtype in (tensor_pb2.DATA_TYPE_UNSPECIFIED, 99):
        tensor = tensor_pb2.Tensor(shape=[1], data=b"\0")
        tensor.dtype = dtype  # type: ignore[assignment]  # an enum value this build does not know
        with pytest.raises(ValueError, match="observation: unknown or unspecified dtype"):
            tensor_codec.decode(tensor, "observation")


def test_a_byte_length_that_does_not_match_the_shape_is_rejected() -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 3], data=b"\0" * 20)
    with pytest.raises(ValueError, match=r"20 bytes do not match float32\[2, 3\] \(24 bytes expected\)"):
        tensor_codec.decode(tensor)


def test_negative_dimensions_are_rejected() -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[-1, -2], data=b"\0\0")
    with pytest.raises(ValueError, match="negative dimension"):
        tensor_codec.decode(tensor)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1] * 65, "has 65 dimensions, more than the 64 allowed"),
        ([2**32, 2**32], r"shape \[4294967296, 4294967296\] is too large for an array"),
        ([0, 2**62, 2**62], "is too large for an array"),  # a zero dimension hides no other
    ],
)
def test_shapes_numpy_cannot_make_are_rejected(shape: list[int], message: str) -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=shape, data=b"")
    with pytest.raises(ValueError, match=message):
        tensor_codec.decode(tensor)


def test_bool_tensors_hold_only_zero_and_one() -> None:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_BOOL, shape=[2], data=b"\x01\x02")
    with pytest.raises(ValueError, match="bool tensor holds bytes other than 0 and 1"):
        tensor_codec.decode(tensor)


def test_columns_and_named_tensors_round_trip() -> None:
    columns: dict[str, np.ndarray] = {"observation": np.ones((3, 4), np.float32), "action": np.arange(3)}
    decoded = tensor_codec.decode_columns(tensor_codec.encode_columns(columns))
    assert decoded.keys() == columns.keys()
    named = tensor_codec.decode_named(tensor_codec.encode_named({"w": np.eye(2, dtype=np.float32)}))
    np.testing.assert_array_equal(named["w"], np.eye(2))
