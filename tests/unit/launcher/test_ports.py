"""Ports chosen for the local run's services before they start."""

from __future__ import annotations

import socket

from services.launcher.ports import pick_free_ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = pick_free_ports(8)
    assert len(set(ports)) == 8
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as file:
        ephemeral_low = int(file.read().split()[0])
    assert all(20_000 <= port < ephemeral_low for port in ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_port_in_use_is_not_chosen() -> None:
    listeners = []
    try:
        for port in pick_free_ports(20):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", port))
            listener.listen()
            listeners.append(listener)
        taken = {listener.getsockname()[1] for listener in listeners}
        # Drawn at random, fresh picks could collide with the held ports only if the check failed.
        for _ in range(20):
            assert taken.isdisjoint(pick_free_ports(50))
    finally:
        for listener in listeners:
            listener.close()
