"""The PIA client against the fake PIA in the test world (host namespace, real HTTPS).

A driver in the host namespace runs one step of the PIA planner and prints the outcome as
JSON: the login travels on stdin, never in arguments.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nordwgd.testing.piaworld import PiaWorld

pytestmark = [pytest.mark.root, pytest.mark.slow]

DRIVER = r"""
import asyncio, json, logging, sys, time
from pathlib import Path
from nordwgd.config import load_config
from nordwgd.errors import NordwgdError
from nordwgd.provider.pia import login
from nordwgd.provider.pia.provider import PiaPlanner

logging.basicConfig(filename=sys.argv[3], level=logging.DEBUG)
config = load_config(Path(sys.argv[1]))
step = sys.argv[2]
clock_offset = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0

async def main():
    lines = sys.stdin.read().splitlines()
    if lines:
        login.store_login(config.paths.state_dir, login.validate_login(lines[0], lines[1]))
    planner = PiaPlanner(config, clock=lambda: time.time() + clock_offset)
    if step == "token":
        await planner.token()
        return {}
    if step == "regions":
        listing = await planner.region_list(refresh=True)
        return {"regions": [r.id for r in listing.regions]}
    if step == "plan":
        target = planner.resolve({"region": "uk"})
        await planner.check_servers(target)
        params = await planner.plan(target, 0, frozenset())
        return {
            "server": params.server.hostname,
            "endpoint": str(params.endpoint),
            "address": str(params.address),
            "dns": [str(d) for d in params.dns],
            "peer": params.peer_public_key,
            "gateway": str(planner.forwarding.gateway),
        }
    if step == "check":
        target = planner.resolve({"region": sys.argv[5]})
        await planner.check_servers(target)
        return {}
    if step == "pinholes":
        opened = []
        async def allow(pinholes):
            opened.append(sorted(f"{a}:{p}" for a, p in pinholes))
        planner.set_allow(allow)
        await planner.region_list(refresh=True)
        meta = sorted(f"{m.address}:443" for m in planner._meta_servers())
        params = await planner.plan(planner.resolve({"region": "uk"}), 0, frozenset())
        return {"meta": meta, "opened": opened, "station": str(params.endpoint.address)}
    if step == "renew":
        # Every server asked must be open in the firewall at the moment it is asked.
        asked = []
        def watch(call):
            async def watched(*args):
                meta = args[-1]
                asked.append({
                    "asked": sorted(f"{m.address}:443" for m in meta),
                    "open": sorted(f"{a}:{p}" for a, p in planner.pinholes),
                })
                return await call(*args)
            return watched
        planner._api.token = watch(planner._api.token)
        planner._api.region_list_wire = watch(planner._api.region_list_wire)
        await planner.refresh()
        return {"calls": asked}
    if step == "logout":
        await planner.logout()
        return {}
    raise SystemExit(f"unknown step {step}")

try:
    result = asyncio.run(main())
    print(json.dumps({"ok": True, **result}))
except NordwgdError as error:
    print(json.dumps(
        {"ok": False, "nick": error.nick, "cause": error.cause, "message": error.message}
    ))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PiaWorld]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables, wireguard-go)")
    built = PiaWorld.build(tmp_path_factory.mktemp("piaworld"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(autouse=True)
def _no_faults(world: PiaWorld) -> Iterator[None]:
    world.fault(None)
    yield
    world.fault(None)


@pytest.fixture
def config(world: PiaWorld, tmp_path: Path) -> Path:
    return world.write_config(
        tmp_path / "nordwgd.toml", paths={"state_dir": str(tmp_path / "state")}
    )


def run(
    world: PiaWorld, config: Path, step: str, *extra: str, login: bool = True
) -> dict[str, Any]:
    log = config.parent / "driver.log"
    offset = extra[0] if extra else "0"
    result = world.host_python(
        DRIVER,
        str(config),
        step,
        str(log),
        offset,
        *extra[1:],
        input=world.login_text() if login else "",
    )
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    # Neither the password nor a token reaches the log.
    text = log.read_text() if log.exists() else ""
    assert world.password not in text
    return answer


def test_login_gives_a_token_kept_0600(world: PiaWorld, config: Path) -> None:
    assert run(world, config, "token") == {"ok": True}
    state = config.parent / "state"
    assert (state / "pia-login").stat().st_mode & 0o777 == 0o600
    assert (state / "pia-token").stat().st_mode & 0o777 == 0o600
    assert world.password not in (state / "pia-token").read_text()
    asked = [r for r in world.pia_requests() if r["path"] == "/authv3/generateToken"]
    assert asked and asked[-1]["username"] == world.username


def test_the_kept_token_is_reused_then_refreshed_before_24_hours(
    world: PiaWorld, config: Path
) -> None:
    def token_requests() -> int:
        return sum(r["path"] == "/authv3/generateToken" for r in world.pia_requests())

    run(world, config, "token")
    state = config.parent / "state"
    first = (state / "pia-token").read_text()
    before = token_requests()
    run(world, config, "token", "3600", login=False)  # an hour later: kept
    assert token_requests() == before
    assert (state / "pia-token").read_text() == first
    run(world, config, "token", str(23.5 * 3600), login=False)  # half an hour before the end
    assert token_requests() == before + 1
    assert (state / "pia-token").read_text() != first


@pytest.mark.parametrize(
    ("fault", "nick", "words"),
    [
        ("bad-credentials", "AuthFailed", "username or password"),
        ("expired", "AuthFailed", "subscription has expired"),
        ("locked", "AuthFailed", "too many login attempts"),
        ("rate-limited", "ApiUnavailable", "rate limited"),
    ],
)
def test_token_errors_are_precise(
    world: PiaWorld, config: Path, fault: str, nick: str, words: str
) -> None:
    world.fault(fault)
    answer = run(world, config, "token")
    assert (answer["ok"], answer["nick"]) == (False, nick)
    assert words in answer["message"]


def test_the_token_service_v2_and_logout_expire_the_token(world: PiaWorld, tmp_path: Path) -> None:
    config = world.write_config(
        tmp_path / "v2.toml",
        paths={"state_dir": str(tmp_path / "state")},
        pia={"api_addresses": ["198.18.0.30"]},
    )
    assert run(world, config, "token")["ok"]
    assert world.pia_requests()[-1]["path"] == "/api/client/v2/token"
    assert run(world, config, "logout", login=False)["ok"]
    expired = [r for r in world.pia_requests() if r["path"] == "/api/client/v2/expire_token"]
    assert expired and expired[-1]["valid"]
    assert not (tmp_path / "state" / "pia-token").exists()
    assert not (tmp_path / "state" / "pia-login").exists()


def test_the_region_list_is_verified_and_kept(world: PiaWorld, config: Path) -> None:
    answer = run(world, config, "regions")
    assert answer["regions"] == ["uk", "us_california", "swiss"]
    assert (config.parent / "state" / "pia-regions").exists()


def test_a_list_with_one_changed_byte_is_never_used(world: PiaWorld, config: Path) -> None:
    world.fault("bad-signature")
    answer = run(world, config, "regions")
    assert (answer["ok"], answer["nick"]) == (False, "ApiUnavailable")
    assert "does not verify" in answer["message"]
    assert not (config.parent / "state" / "pia-regions").exists()


def test_plan_registers_a_new_key_with_a_uk_server(world: PiaWorld, config: Path) -> None:
    first = run(world, config, "plan")
    assert first["ok"], first
    assert first["server"] in ("london410", "london411")
    station = world.server(first["server"]).station
    assert first["endpoint"] == f"{station}:51820"
    assert first["address"].startswith("10.5.0.") and first["address"].endswith("/32")
    assert first["dns"] == [world.tunnel_dns]
    assert first["gateway"] == "10.5.0.1"
    assert first["peer"] == world.server(first["server"]).public_key
    second = run(world, config, "plan", login=False)
    added = [r for r in world.pia_requests() if r["path"] == "/addKey"]
    assert added[-1]["pubkey"] != added[-2]["pubkey"]  # a new key pair per connect
    assert second["ok"]


@pytest.mark.parametrize(
    ("fault", "nick", "cause", "words"),
    [
        ("login-failed", "AuthFailed", "auth-failed", "refused the token"),
        ("wrong-echo", "TunnelFailed", "tunnel-failed", "peer_pubkey"),
        ("wrong-cert", "ApiUnavailable", "api-unavailable", "certificate"),
    ],
)
def test_add_key_errors_give_precise_causes(
    world: PiaWorld, config: Path, fault: str, nick: str, cause: str, words: str
) -> None:
    assert run(world, config, "regions")["ok"]  # the list first: the fault is for addKey
    world.fault(fault)
    answer = run(world, config, "plan")
    assert (answer["ok"], answer["nick"], answer["cause"]) == (False, nick, cause), answer
    assert words in answer["message"]


def test_a_refused_token_is_renewed_once(world: PiaWorld, config: Path) -> None:
    assert run(world, config, "token")["ok"]
    world.fault("login-failed", count=1)
    answer = run(world, config, "plan", login=False)
    assert answer["ok"], answer


@pytest.mark.parametrize(
    ("region", "nick", "words"),
    [
        ("londn", "UnknownLocation", "did you mean: UK London"),
        ("swiss", "NoServer", "offline"),
    ],
)
def test_regions_are_checked_at_connect(
    world: PiaWorld, config: Path, region: str, nick: str, words: str
) -> None:
    answer = run(world, config, "check", "0", region)
    assert (answer["ok"], answer.get("nick")) == (False, nick)
    assert words in answer["message"]


def test_port_forwarding_refuses_a_us_region_naming_others(world: PiaWorld, tmp_path: Path) -> None:
    config = world.write_config(
        tmp_path / "pf.toml",
        paths={"state_dir": str(tmp_path / "state")},
        port_forward={"enabled": True},
    )
    answer = run(world, config, "check", "0", "us_california")
    assert (answer["ok"], answer["nick"]) == (False, "NoServer")
    assert answer["message"].endswith("regions with port forwarding: uk")
    plain = world.write_config(tmp_path / "plain.toml", paths={"state_dir": str(tmp_path / "s")})
    assert run(world, plain, "check", "0", "us_california")["ok"]


def test_the_firewall_is_told_every_server_before_it_is_asked(
    world: PiaWorld, tmp_path: Path
) -> None:
    # Only one meta server configured: the region list names another, asked first from then on.
    config = world.write_config(
        tmp_path / "one-meta.toml",
        paths={"state_dir": str(tmp_path / "state")},
        pia={"meta": ["london401@198.18.0.20"]},
    )
    answer = run(world, config, "pinholes")
    assert answer["ok"], answer
    assert "198.18.0.21:443" in answer["meta"]  # zurich401, from the verified list
    last = set(answer["opened"][-1])
    assert set(answer["meta"]) <= last
    assert f"{answer['station']}:1337" in last


def test_renew_after_a_restart_opens_the_new_meta_servers_first(
    world: PiaWorld, tmp_path: Path
) -> None:
    config = world.write_config(
        tmp_path / "one-meta.toml",
        paths={"state_dir": str(tmp_path / "state")},
        pia={"meta": ["london401@198.18.0.20"]},
    )
    assert run(world, config, "regions")["ok"]  # kept on disk, as by an earlier process
    answer = run(world, config, "renew")
    assert answer["ok"], answer
    calls = answer["calls"]
    assert len(calls) == 2  # the region list, then the token
    assert any("198.18.0.21:443" in call["asked"] for call in calls)
    for call in calls:
        assert set(call["asked"]) <= set(call["open"]), call
