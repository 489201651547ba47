"""The name-to-family dict: the one place that knows which algorithm families exist."""

from __future__ import annotations

from apexrl.learner.v1 import learner_pb2
from services.algorithms.apex_dqn.family import ApexDqnFamily
from services.algorithms.interface import AlgorithmFamily
from services.algorithms.sac.family import SacFamily
from services.algorithms.td3.family import Td3Family

FAMILIES: dict[str, AlgorithmFamily] = {
    "apex_dqn": ApexDqnFamily(),
    "td3": Td3Family(),
    "sac": SacFamily(),
}


def family_named(name: str) -> AlgorithmFamily:
    """The family of an ``algorithm.name``; ValueError naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {sorted(FAMILIES)}") from None


def family_for_wire(algorithm: learner_pb2.Algorithm.ValueType) -> AlgorithmFamily:
    """The family of a wire Algorithm; ValueError for one this build does not implement."""
    for family in FAMILIES.values():
        if family.wire_algorithm == algorithm:
            return family
    known = ", ".join(learner_pb2.Algorithm.Name(f.wire_algorithm) for f in FAMILIES.values())
    try:
        name = learner_pb2.Algorithm.Name(algorithm)
    except ValueError:
        name = str(algorithm)
    raise ValueError(
        f"the learner trains {name}, which this client does not implement (it knows {known}); "
        "run a client of the learner's version"
    )
