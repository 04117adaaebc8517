"""free_port: a port a server can bind later, which no outgoing connection takes in between."""

from __future__ import annotations

import socket
from pathlib import Path

from flink_jobs.devtools.processes import HOST, free_port


def test_free_port_is_below_the_ephemeral_range_and_bindable():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports)  # the kernel never gives these to an outgoing connection
    assert len(ports) > 1  # drawn at random, so two servers started together do not ask for the same one
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, port))


def test_free_port_skips_a_port_in_use(monkeypatch):
    import flink_jobs.devtools.processes as processes

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        taken.bind((HOST, 0))
        taken.listen()
        probe.bind((HOST, 0))
        busy, free = taken.getsockname()[1], probe.getsockname()[1]
        probe.close()
        draws = iter([busy, busy, free])
        monkeypatch.setattr("random.randrange", lambda low, high: next(draws))
        monkeypatch.setattr(processes, "_LISTEN_PORTS", (1, 65_536))
        monkeypatch.setattr(processes, "_ephemeral_low", lambda: 65_536)
        assert free_port() == free  # the busy one was tried twice and passed over
