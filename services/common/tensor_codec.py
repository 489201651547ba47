"""numpy <-> apexrl.common.v1.Tensor codec: raw little-endian bytes, zero-copy decode where numpy allows."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from apexrl.common.v1 import tensor_pb2
from services.common.encoded import CODECS, Codec, Column, EncodedItems, InvalidInputError

_WIRE_TO_NUMPY: dict[int, np.dtype[np.generic]] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_INT8: np.dtype("i1"),
    tensor_pb2.DATA_TYPE_INT16: np.dtype("<i2"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("?"),
}
_NUMPY_TO_WIRE: dict[str, tensor_pb2.DataType.ValueType] = {
    "float32": tensor_pb2.DATA_TYPE_FLOAT32,
    "float64": tensor_pb2.DATA_TYPE_FLOAT64,
    "float16": tensor_pb2.DATA_TYPE_FLOAT16,
    "int8": tensor_pb2.DATA_TYPE_INT8,
    "int16": tensor_pb2.DATA_TYPE_INT16,
    "int32": tensor_pb2.DATA_TYPE_INT32,
    "int64": tensor_pb2.DATA_TYPE_INT64,
    "uint8": tensor_pb2.DATA_TYPE_UINT8,
    "bool": tensor_pb2.DATA_TYPE_BOOL,
}


# Keyed by dtype object: a dtype's ``.name`` is rebuilt on every access (microseconds on the hot path).
_NATIVE_TO_WIRE = {_WIRE_TO_NUMPY[value]: value for value in _NUMPY_TO_WIRE.values()}


def wire_dtype(dtype: np.dtype[np.generic]) -> tensor_pb2.DataType.ValueType:
    """The wire enum for a numpy dtype; TypeError for dtypes the wire does not carry."""
    value = _NATIVE_TO_WIRE.get(dtype)
    if value is not None:
        return value
    try:
        return _NUMPY_TO_WIRE[dtype.name]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be sent; supported: {sorted(_NUMPY_TO_WIRE)}") from None


def numpy_dtype(dtype: int) -> np.dtype[np.generic]:
    """The numpy dtype for a wire enum value; InvalidInputError for unknown or unspecified values."""
    try:
        return _WIRE_TO_NUMPY[dtype]
    except KeyError:
        raise InvalidInputError(f"unknown tensor dtype {dtype}") from None


def encode_into(tensor: tensor_pb2.Tensor, array: NDArray[np.generic] | np.generic) -> None:
    """Fills ``tensor`` in place: one copy of the array's bytes (C order, little-endian).

    Filling a field of the parent message avoids the deep copies that nesting
    freshly built messages in constructors costs (megabytes for image batches).
    """
    array = np.asarray(array)
    dtype = wire_dtype(array.dtype)
    tensor.dtype = dtype
    tensor.shape[:] = array.shape
    tensor.data = np.ascontiguousarray(array, dtype=_WIRE_TO_NUMPY[dtype]).tobytes()


def encode(array: NDArray[np.generic] | np.generic) -> tensor_pb2.Tensor:
    tensor = tensor_pb2.Tensor()
    encode_into(tensor, array)
    return tensor


# numpy builds no array of more dimensions, nor one whose nonzero dimensions times its itemsize
# pass sys.maxsize bytes, even an empty one (a zero dimension): such shapes are the sender's error.
_MAX_DIMENSIONS = 64


def _check_shape(name: str, what: str, shape: tuple[int, ...], itemsize: int) -> None:
    """InvalidInputError naming ``name`` unless numpy can make an array of ``shape``."""
    # The usual case in one pass: no dimension zero or negative, and not too large.
    if (
        len(shape) <= _MAX_DIMENSIONS
        and min(shape, default=1) > 0
        and math.prod(shape) * itemsize <= sys.maxsize
    ):
        return
    if any(dimension < 0 for dimension in shape):
        raise InvalidInputError(f"{name}: negative dimension in {what} {list(shape)}")
    if len(shape) > _MAX_DIMENSIONS:
        raise InvalidInputError(
            f"{name}: {what} has {len(shape)} dimensions, more than the {_MAX_DIMENSIONS} allowed"
        )
    if math.prod(max(dimension, 1) for dimension in shape) * itemsize > sys.maxsize:
        raise InvalidInputError(f"{name}: {what} {list(shape)} is too large for an array")


def decode(tensor: tensor_pb2.Tensor, name: str = "tensor") -> NDArray[Any]:
    """A read-only array over the message's bytes; InvalidInputError naming ``name`` when malformed."""
    try:
        dtype = numpy_dtype(tensor.dtype)
    except ValueError:
        raise InvalidInputError(f"{name}: unknown or unspecified dtype {tensor.dtype}") from None
    shape = tuple(tensor.shape)
    _check_shape(name, "shape", shape, dtype.itemsize)
    count = math.prod(shape)
    data = tensor.data
    if len(data) != count * dtype.itemsize:
        raise InvalidInputError(
            f"{name}: {len(data)} bytes do not match {dtype.name}{list(shape)} "
            f"({count * dtype.itemsize} bytes expected)"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.kind == "b" and array.view(np.uint8).max(initial=0) > 1:
        raise InvalidInputError(f"{name}: bool tensor holds bytes other than 0 and 1")
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


_CODEC_TO_WIRE: dict[Codec, tensor_pb2.Codec.ValueType] = {"zstd": tensor_pb2.CODEC_ZSTD}
_WIRE_TO_CODEC = {value: codec for codec, value in _CODEC_TO_WIRE.items()}
assert set(_CODEC_TO_WIRE) == set(CODECS)


def wire_codec(codec: Codec) -> tensor_pb2.Codec.ValueType:
    return _CODEC_TO_WIRE[codec]


def codec_from_wire(value: int, name: str = "codec") -> Codec:
    """The codec of a wire enum value; InvalidInputError for unknown or unspecified values."""
    try:
        return _WIRE_TO_CODEC[value]  # type: ignore[index]
    except KeyError:
        raise InvalidInputError(f"{name}: unknown or unspecified codec {value}") from None


def encode_encoded_into(column: tensor_pb2.EncodedColumn, items: EncodedItems) -> None:
    column.codec = _CODEC_TO_WIRE[items.codec]
    column.item_spec.CopyFrom(encode_spec(items.dtype, items.item_shape))
    encode_into(column.sizes, items.sizes)
    column.data = items.data.tobytes()


def decode_encoded(column: tensor_pb2.EncodedColumn, name: str) -> EncodedItems:
    """The column's items, still compressed; InvalidInputError naming ``name`` when malformed.

    Checks the framing only (codec, item spec, sizes against the data); whether the
    bytes decompress is :func:`services.common.encoded.check_encoded`'s to tell.
    """
    codec = codec_from_wire(column.codec, name)
    try:
        dtype = numpy_dtype(column.item_spec.dtype)
    except ValueError:
        raise InvalidInputError(
            f"{name}: unknown or unspecified item dtype {column.item_spec.dtype}"
        ) from None
    item_shape = tuple(column.item_spec.shape)
    _check_shape(name, "item shape", item_shape, dtype.itemsize)
    sizes = decode(column.sizes, f"{name} sizes")
    if sizes.dtype != np.int64 or sizes.ndim != 1:
        raise InvalidInputError(f"{name}: sizes must be int64 [N], got {sizes.dtype.name}{list(sizes.shape)}")
    # The items decode to one array [N, *item_shape]: it must be one numpy can make.
    _check_shape(name, "decoded shape", (len(sizes), *item_shape), dtype.itemsize)
    data = np.frombuffer(column.data, dtype=np.uint8)
    if len(sizes) and int(sizes.min()) < 1:
        index = int(np.flatnonzero(sizes < 1)[0])
        raise InvalidInputError(
            f"{name}: sizes[{index}] = {int(sizes[index])}; every item needs at least 1 byte"
        )
    # No size above the data's length, so the int64 sum below cannot wrap round to it.
    if len(sizes) and int(sizes.max()) > data.shape[0]:
        raise InvalidInputError(
            f"{name}: an item of {int(sizes.max())} bytes, but the data holds {data.shape[0]}"
        )
    if int(sizes.sum()) != data.shape[0]:
        raise InvalidInputError(
            f"{name}: sizes add up to {int(sizes.sum())} bytes but the data holds {data.shape[0]}"
        )
    return EncodedItems(codec, dtype, item_shape, sizes, data)


def encode_columns_into(batch: tensor_pb2.TransitionBatch, columns: Mapping[str, Column]) -> None:
    for name, column in columns.items():
        if isinstance(column, EncodedItems):
            encode_encoded_into(batch.encoded_columns[name], column)
        else:
            encode_into(batch.columns[name], column)


def encode_columns(columns: Mapping[str, Column]) -> tensor_pb2.TransitionBatch:
    batch = tensor_pb2.TransitionBatch()
    encode_columns_into(batch, columns)
    return batch


def decode_columns(batch: tensor_pb2.TransitionBatch) -> dict[str, Column]:
    """Decodes every column (encoded ones stay compressed); the caller checks lengths and signature."""
    columns: dict[str, Column] = {
        name: decode(tensor, f"column {name!r}") for name, tensor in batch.columns.items()
    }
    for name, encoded in batch.encoded_columns.items():
        if name in columns:
            raise InvalidInputError(f"column {name!r} is given both raw and encoded")
        columns[name] = decode_encoded(encoded, f"column {name!r}")
    return columns


def encode_named(tensors: Mapping[str, NDArray[np.generic]]) -> tensor_pb2.NamedTensors:
    message = tensor_pb2.NamedTensors()
    for name, array in tensors.items():
        encode_into(message.tensors[name], array)
    return message


def decode_named(message: tensor_pb2.NamedTensors) -> dict[str, NDArray[Any]]:
    return {name: decode(tensor, f"tensor {name!r}") for name, tensor in message.tensors.items()}


def encode_spec(dtype: np.dtype[np.generic], shape: tuple[int, ...]) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(dtype=wire_dtype(dtype), shape=shape)
