"""The Connection tests of tests/test_connection.py, with the client on kernel WireGuard.

The same tests run here unchanged (imported below): up and down restore the namespace exactly,
a killed process's link, routes and DNS are undone by ``recover`` in a new process, failures
undo the steps before them and leave what other programs made, a name taken by another link
is refused. Only the ``pair`` fixture differs: its client uses the kernel backend (the server
stays wireguard-go, so both implementations meet on the wire).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing import netns as ns
from tests.test_connection import (
    SERVER_TUNNEL,
    Driver,
    Pair,
    pair_in_namespaces,
    ping,
    test_a_dns_failure_undoes_the_steps_before_it,
    test_a_failed_routing_step_leaves_what_others_made,
    test_a_killed_process_is_cleaned_up_by_recover,
    test_an_interface_that_exists_already_is_refused_and_left_alone,
    test_an_invalid_peer_key_undoes_the_link,
    test_an_unreadable_record_is_cleaned_up_by_name,
    test_up_reaches_the_peer_and_down_restores_everything,
)
from tests.uml.helpers import assert_kernel_wireguard, link_kind

__all__ = [
    "test_a_dns_failure_undoes_the_steps_before_it",
    "test_a_failed_routing_step_leaves_what_others_made",
    "test_a_killed_process_is_cleaned_up_by_recover",
    "test_an_interface_that_exists_already_is_refused_and_left_alone",
    "test_an_invalid_peer_key_undoes_the_link",
    "test_an_unreadable_record_is_cleaned_up_by_name",
    "test_up_reaches_the_peer_and_down_restores_everything",
]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with pair_in_namespaces(tmp_path, backend="kernel") as made:
        yield made


@pytest.mark.root
def test_the_tunnel_is_kernel_wireguard_and_a_killed_process_leaves_it(pair: Pair) -> None:
    driver = Driver.for_pair(pair)
    reply = driver.send({"op": "up", "params": pair.params()})
    assert reply["ok"], reply
    assert_kernel_wireguard(pair.client, pair.client_ifname)
    assert ping(pair, SERVER_TUNNEL)
    # Kernel WireGuard has no process to die with ours: the link outlives the killed owner
    # and keeps working until recover removes it.
    driver.kill()
    assert link_kind(pair.client, pair.client_ifname) == "wireguard"
    assert ping(pair, SERVER_TUNNEL)
    fresh = Driver.for_pair(pair)
    assert fresh.send({"op": "recover"})["ok"]
    assert link_kind(pair.client, pair.client_ifname) == ""
    assert not ping(pair, SERVER_TUNNEL)
    addresses = ns.ns_exec(pair.client, ["ip", "-o", "address"]).stdout
    assert "10.5.0.2" not in addresses
    fresh.close()
