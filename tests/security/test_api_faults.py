"""The NordVPN API misbehaving while the real daemon connects in the test world.

For every fault the fake API can inject, the daemon must stay up, name the precise cause in
``ErrorCause`` over D-Bus, keep blocking (probes from the host get nothing through and the leak
monitor counts nothing), and recover once the API does: by its own retry for causes that may go
away by themselves, by a new Connect for those that need the user (a new token after a refused
one, a Connect after an empty server list).

The daemon logs in with SetToken (no token_file) and uses a one-second API timeout with a single
round over the two pinned addresses, so each fault is reported within seconds.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Stack, answered, stack_fixture
from tests.security.ledger import ScenarioRecorder

pytestmark = pytest.mark.root

stack = stack_fixture(token_file=None, api={"timeout": 1.0, "attempts": 1})

# fault -> (ErrorCause, recovers by its own retry)
FAULTS: dict[str, tuple[str, bool]] = {
    "401": ("auth-failed", False),
    "429": ("api-unavailable", True),
    "500": ("api-unavailable", True),
    "garbage": ("api-unavailable", True),
    "truncated": ("api-unavailable", True),
    "hang": ("api-unavailable", True),
    "wrong-cert": ("api-unavailable", True),
    "empty": ("no-server", False),
}
ERROR_TIMEOUT = 60.0
# The error state retries with a doubling backoff (2 s, 4 s, 8 s, ...): a few rounds may pass
# while the probes run, so recovery may take one long backoff.
RECOVERY_TIMEOUT = 120.0


def log_in(stack: Stack) -> None:
    stack.client.call("SetToken", "s", [stack.world.token.reveal()])


@pytest.mark.parametrize("fault", list(FAULTS))
def test_api_fault_is_named_blocked_and_recovered(
    stack: Stack, ledger: ScenarioRecorder, fault: str
) -> None:
    cause, retries = FAULTS[fault]
    if fault == "wrong-cert":
        # A TLS session verified earlier would be reused: the wrong certificate must meet a
        # fresh connection, as after a daemon start.
        stack.restart()
    stack.reset()
    log_in(stack)
    world = stack.world
    try:
        world.fault(fault)
        ledger.fault(f"API {fault}")
        stack.client.connect()
        props = stack.wait_for_state("error", timeout=ERROR_TIMEOUT)
        assert props["ErrorCause"] == cause, (props, stack.daemon.tail())
        assert props["Blocking"] == "blocked", props
        assert props["Server"] == {} and props["Interface"] == "", props

        stack.reset_leaks()
        results = stack.probes.standard()
        leaked = stack.leaked()
        ledger.leaked(leaked)
        assert answered(results) == [], results
        assert leaked == 0, stack.leaks()
        assert stack.daemon.alive, stack.daemon.tail()
        props = stack.props()
        assert props["Blocking"] == "blocked", props
        if not retries:
            # Nothing to retry without the user: the error holds, and says why.
            assert props["State"] == "error" and props["ErrorCause"] == cause, props
    finally:
        world.fault(None)

    if fault == "401":
        log_in(stack)  # the user logs in again
    if not retries:
        stack.client.connect()
    props = stack.wait_for_state("connected", timeout=RECOVERY_TIMEOUT)
    assert props["ErrorCause"] == "" and props["Server"]["hostname"], props
    seen = world.http_get_from_host(timeout=5)
    assert seen in {server.station for server in world.servers}, seen
    assert stack.daemon.alive
    stack.client.call("Disconnect")
    stack.wait_for_state("disconnected", timeout=30, Blocking="open")
