"""SampleTransitions replies serialized with each column's bytes copied once, straight into the reply.

Building the reply as messages copies a column three times (array to bytes, bytes
into the message, message to the wire), which for a batch of Atari frames (14 MB)
is most of the shard's time. Here protobuf serializes every small part, and the
column data is spliced in as the last field of its Tensor (protobuf accepts fields
in any order), so the one copy is the final join. Large rows are not even gathered
first: the table hands their storage's own views (under its lock), and the join
copies them into the reply. The result parses as an ordinary
SampleTransitionsResponse; tests check it equals the message-built one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from apexrl.common.v1 import tensor_pb2
from apexrl.replay.v1 import replay_pb2
from services.common import tensor_codec
from services.common.encoded import Column, EncodedItems
from services.replay.columns import StoredRows
from services.replay.table import InPlace, SampledItems

_LENGTH_DELIMITED = 2
# Field numbers from the protos.
_RESPONSE_BATCH = 3  # SampleTransitionsResponse.batch
_BATCH_COLUMNS = 1  # TransitionBatch.columns (a map: repeated entries)
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # map entry
_TENSOR_DATA = 3  # Tensor.data

_SPLICE_MIN_BYTES = 1 << 20

Chunk = bytes | memoryview


@dataclass
class _Pieces:
    """Chunks of wire bytes and their total length, kept as they are added (never re-summed)."""

    chunks: list[Chunk] = field(default_factory=list)
    length: int = 0

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.length += len(chunk)

    def add_field(self, number: int, payload: _Pieces) -> None:
        """A length-delimited field: tag, length, then the payload's chunks."""
        self.add(_varint((number << 3) | _LENGTH_DELIMITED))
        self.add(_varint(payload.length))
        self.chunks += payload.chunks
        self.length += payload.length


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tensor(array: np.ndarray) -> _Pieces:
    header = tensor_pb2.Tensor()
    tensor_codec.encode_into(header, array[:0])  # dtype and a placeholder shape, no data
    header.shape[:] = array.shape
    data = np.ascontiguousarray(array, dtype=tensor_codec.numpy_dtype(header.dtype))
    tensor = _Pieces()
    tensor.add(header.SerializeToString())
    payload = _Pieces()
    payload.add(data.reshape(-1).view(np.uint8).data)
    tensor.add_field(_TENSOR_DATA, payload)
    return tensor


def _stored_tensor(stored: StoredRows) -> _Pieces:
    """A Tensor whose data are the stored rows themselves: the final join is their one copy."""
    header = tensor_pb2.Tensor(
        dtype=tensor_codec.wire_dtype(stored.dtype), shape=(len(stored), *stored.item_shape)
    )
    tensor = _Pieces()
    tensor.add(header.SerializeToString())
    tensor.add_field(_TENSOR_DATA, _Pieces(list(stored.rows), stored.nbytes))
    return tensor


def serialize_sample(
    items: SampledItems[InPlace] | SampledItems[Column], enclosing_field: int | None = None
) -> bytes:
    """The wire bytes of the SampleTransitionsResponse for ``items``; with ``enclosing_field``,
    of a message holding that response as this field (SampleStreamResponse.sample)."""
    reply = _reply(items)
    if enclosing_field is not None:
        enclosing = _Pieces()
        enclosing.add_field(enclosing_field, reply)
        reply = enclosing
    return b"".join(reply.chunks)  # one chunk comes back as it is, uncopied


def _reply(items: SampledItems[InPlace] | SampledItems[Column]) -> _Pieces:
    """The SampleTransitionsResponse's wire chunks.

    Small replies go through the message API: below ~1 MiB the copies cost less
    than assembling the pieces in Python. Rows given as views of the table's storage
    (:class:`StoredRows`, under its lock) are joined into the reply directly.
    """
    head = replay_pb2.SampleTransitionsResponse(
        total_priority_mass=items.total_priority_mass, size=items.size
    )
    tensor_codec.encode_into(head.keys, items.keys)
    tensor_codec.encode_into(head.priority_masses, items.priority_masses)
    columns = items.columns
    reply = _Pieces()
    stored = any(isinstance(column, StoredRows) for column in columns.values())
    if not stored and sum(column.nbytes for column in columns.values()) < _SPLICE_MIN_BYTES:
        tensor_codec.encode_columns_into(
            head.batch,
            {name: column for name, column in columns.items() if not isinstance(column, StoredRows)},
        )
        reply.add(head.SerializeToString())
        return reply
    batch = _Pieces()
    encoded = tensor_pb2.TransitionBatch()  # compressed columns are small: the message API serializes them
    for name, column in columns.items():
        if isinstance(column, EncodedItems):
            tensor_codec.encode_encoded_into(encoded.encoded_columns[name], column)
            continue
        entry = _Pieces()
        key = _Pieces()
        key.add(name.encode())
        entry.add_field(_ENTRY_KEY, key)
        entry.add_field(
            _ENTRY_VALUE, _stored_tensor(column) if isinstance(column, StoredRows) else _tensor(column)
        )
        batch.add_field(_BATCH_COLUMNS, entry)
    # Map entries are repeated fields: the two parts of the batch concatenate into one.
    batch.add(encoded.SerializeToString())
    reply.add(head.SerializeToString())
    reply.add_field(_RESPONSE_BATCH, batch)
    return reply
