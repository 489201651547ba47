"""Network parameters on the wire: a torch state_dict as named tensors, never pickled."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from apexrl.common.v1 import tensor_pb2
from services.common import tensor_codec


def to_wire(state_dict: Mapping[str, torch.Tensor]) -> tensor_pb2.NamedTensors:
    """Copies every tensor to host memory and encodes it."""
    return tensor_codec.encode_named(
        {name: tensor.detach().cpu().numpy() for name, tensor in state_dict.items()}
    )


def from_wire(message: tensor_pb2.NamedTensors) -> dict[str, torch.Tensor]:
    """Tensors that own their memory (the wire bytes are read-only)."""
    return {
        name: torch.from_numpy(np.array(array)) for name, array in tensor_codec.decode_named(message).items()
    }
