"""Excluded apps under real systemd: nordwgctl exclude, the SplitTunnel D-Bus interface, polkit.

The test world runs inside a booted container (``world_box`` from test_system); nordwgd.service
runs in the world's host namespace, and systemd (not the test) moves processes into
nordwgd-excluded.slice. The container has its own cgroup namespace, so this also covers the
daemon matching a slice whose absolute depth it cannot see.
"""

from __future__ import annotations

import json
import time

import pytest

from nordwgd.testing.nspawn import Container
from nordwgd.testing.systemworld import connect_and_wait, wait_for
from tests.test_system import InnerWorld, world_box

pytestmark = [pytest.mark.nspawn, pytest.mark.root, pytest.mark.slow]

__all__ = ["world_box"]  # the fixture, used by name below

SPLIT = ("org.nordwgd.Nordwgd1", "/org/nordwgd/Nordwgd1", "org.nordwgd.Nordwgd1.SplitTunnel")
SLICE_PATH = "nordwgd.slice/nordwgd-excluded.slice"
PROBE = "nwgt-probe.service"
POLKIT_RULE = "/etc/polkit-1/rules.d/50-nwgt-configure.rules"


def host_address(box: Container, world: InnerWorld) -> str:
    shown = box.run(["ip", "-n", world.host_ns, "-j", "-4", "addr", "show", "eth0"]).stdout
    return str(json.loads(shown)[0]["addr_info"][0]["local"])


def excluded_units(box: Container) -> list[str]:
    shown = box.run(["busctl", "--json=short", "get-property", *SPLIT, "ExcludedUnits"]).stdout
    units: list[str] = json.loads(shown)["data"]
    return units


def probe_saw(box: Container) -> str:
    return box.run(["cat", "/run/nwgt-probe.out"], check=False).stdout.strip()


def test_exclude_command_and_unit_through_systemd(
    world_box: tuple[Container, InnerWorld],
) -> None:
    box, world = world_box
    box.run(["systemctl", "start", "nordwgd.service"])
    connect_and_wait(box)
    web = f"http://{world.info['web']}/"
    stations = set(world.info["stations"])
    host = host_address(box, world)
    in_host = ["ip", "netns", "exec", world.host_ns]

    # Nothing excluded yet: no slice, no split rules (and so no cost for anyone).
    assert box.unit_property("nordwgd-excluded.slice", "ActiveState") == "inactive"
    assert "nordwgd_split" not in world.host(["nft", "list", "tables"])
    # A sibling goes through the tunnel.
    assert box.run([*in_host, "curl", "-sS", "--max-time", "10", web]).stdout.strip() in stations

    # nordwgctl exclude -- COMMAND: the command runs in a scope of the slice, from the host's
    # own address, and its child processes too.
    script = f"cat /proc/self/cgroup; curl -sS --max-time 10 {web}"
    shown = box.run([*in_host, "nordwgctl", "exclude", "--", "sh", "-c", script]).stdout
    assert f"/{SLICE_PATH}/nordwgd-excluded-" in shown, shown
    assert shown.splitlines()[-1] == host, shown
    # systemd made the slice for the scope; it, not the test, owns the cgroup.
    assert box.unit_property("nordwgd-excluded.slice", "ActiveState") == "active"

    # Another user may not exclude anything (configure is for administrators), nor put a
    # process into the slice through systemd itself, nor by writing the cgroup.
    refused = box.run_as("nobody", ["nordwgctl", "exclude", "--", "true"], check=False)
    assert refused.returncode == 4, refused
    assert "not authorized" in refused.stderr
    scope = box.run_as(
        "nobody",
        ["systemd-run", "--scope", "--slice=nordwgd-excluded.slice", "true"],
        check=False,
    )
    assert scope.returncode != 0
    procs = f"/sys/fs/cgroup/unified/{SLICE_PATH}/cgroup.procs"
    if box.run(["test", "-e", procs], check=False).returncode != 0:
        procs = f"/sys/fs/cgroup/{SLICE_PATH}/cgroup.procs"
    joined = box.run_as("nobody", ["sh", "-c", f"echo $$ > {procs}"], check=False)
    assert joined.returncode != 0 and "Permission denied" in joined.stderr

    # A user polkit lets configure (here by a rule, as an administrator's password would)
    # runs the command as itself: the scope holds the caller's own process.
    box.run(
        ["install", "-D", "-m", "0644", "/dev/stdin", POLKIT_RULE],
        input=(
            "polkit.addRule(function(action, subject) {\n"
            '  if (action.id == "org.nordwgd.nordwgd1.configure" && subject.user == "nobody")\n'
            "    return polkit.Result.YES;\n"
            "});\n"
        ),
    )
    try:

        def nobody_excluded() -> bool:
            done = box.run_as(
                "nobody",
                ["nordwgctl", "exclude", "--", "sh", "-c", "id -u; cat /proc/self/cgroup"],
                check=False,
            )
            return (
                done.returncode == 0
                and done.stdout.startswith("65534\n")
                and (f"/{SLICE_PATH}/nordwgd-excluded-" in done.stdout)
            )

        wait_for("polkit to let nobody exclude", nobody_excluded, timeout=30)
    finally:
        box.run(["rm", "-f", POLKIT_RULE])

    # nordwgctl exclude --unit: a running service's processes move into the slice.
    loop = f"while :; do curl -s --max-time 3 {web} > /run/nwgt-probe.out; sleep 0.3; done"
    box.run(
        [
            "systemd-run",
            f"--unit={PROBE}",
            "--property",
            f"NetworkNamespacePath=/run/netns/{world.host_ns}",
            "sh",
            "-c",
            loop,
        ]
    )
    wait_for("the probe through the tunnel", lambda: probe_saw(box) in stations, timeout=30)
    moved = box.run(["nordwgctl", "exclude", "--unit", PROBE]).stdout
    units = excluded_units(box)
    assert len(units) == 1 and units[0].startswith("nordwgd-excluded-nwgt-probe-"), units
    assert units[0] in moved
    wait_for("the probe outside the tunnel", lambda: probe_saw(box) == host, timeout=30)
    status = box.run(["nordwgctl", "status"]).stdout
    assert f"Excluded:   {units[0]}" in status
    assert json.loads(box.run(["nordwgctl", "status", "--json"]).stdout)["ExcludedUnits"] == units

    # --remove: back into its own unit, and into the tunnel.
    box.run(["nordwgctl", "exclude", "--remove", units[0]])
    wait_for("the probe back in the tunnel", lambda: probe_saw(box) in stations, timeout=30)
    assert excluded_units(box) == []
    assert box.unit_property(PROBE, "ActiveState") == "active"

    # The slice made anew (a new cgroup id) still works: the daemon loads its rules again.
    box.run(["systemctl", "stop", "nordwgd-excluded.slice"])
    time.sleep(0.5)
    again = box.run(
        [*in_host, "nordwgctl", "exclude", "--", "curl", "-sS", "--max-time", "10", web]
    ).stdout.strip()
    assert again == host
    box.run(["systemctl", "stop", PROBE], check=False)
