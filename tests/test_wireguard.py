"""WireGuard backends: the UAPI text protocol, and real wireguard-go instances in a namespace."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_network
from pathlib import Path

import pytest

from nordwgd.errors import TunnelFailed
from nordwgd.model import Endpoint, Secret
from nordwgd.testing.fleet import generate_keypair
from nordwgd.testing.netns import (
    RUN_ID,
    create_netns,
    delete_netns,
    run,
    run_python,
    unique_name,
)
from nordwgd.wireguard.uapi import (
    DeviceConfig,
    PeerConfig,
    check_errno,
    hex_to_key,
    key_to_hex,
    parse_get,
    render_set,
)


def test_key_round_trip() -> None:
    _, public = generate_keypair()
    assert len(key_to_hex(public)) == 64
    assert hex_to_key(key_to_hex(public)) == public


@pytest.mark.parametrize("bad", ["not base64!", "AAAA", ""])
def test_bad_keys_are_tunnel_failed(bad: str) -> None:
    with pytest.raises(TunnelFailed, match="WireGuard key"):
        key_to_hex(bad)


def test_render_set_replaces_peers_and_allowed_ips() -> None:
    private, _ = generate_keypair()
    _, peer = generate_keypair()
    request = render_set(
        DeviceConfig(
            private_key=Secret(private),
            fwmark=0xCA6C,
            peers=(
                PeerConfig(
                    public_key=peer,
                    endpoint=Endpoint(IPv4Address("203.0.113.11")),
                    allowed_ips=(ip_network("0.0.0.0/0"), ip_network("::/0")),
                    keepalive=25,
                ),
            ),
        )
    )
    assert isinstance(request, Secret)
    assert private not in repr(request)
    assert request.reveal().splitlines() == [
        "set=1",
        f"private_key={key_to_hex(private)}",
        f"fwmark={0xCA6C}",
        "replace_peers=true",
        f"public_key={key_to_hex(peer)}",
        "endpoint=203.0.113.11:51820",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        "allowed_ip=0.0.0.0/0",
        "allowed_ip=::/0",
        "",
    ]


def test_parse_get_reads_peer_counters() -> None:
    _, peer = generate_keypair()
    reply = (
        "private_key=" + "11" * 32 + "\nlisten_port=40000\nfwmark=51820\n"
        f"public_key={key_to_hex(peer)}\nendpoint=203.0.113.11:51820\n"
        "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
        "rx_bytes=92\ntx_bytes=148\npersistent_keepalive_interval=25\n"
        "allowed_ip=0.0.0.0/0\nprotocol_version=1\nerrno=0\n\n"
    )
    state = parse_get(reply)
    assert state.listen_port == 40000
    assert state.fwmark == 51820
    assert len(state.peers) == 1
    assert state.peers[0].public_key == peer
    assert state.peers[0].latest_handshake == pytest.approx(1700000000.5)
    assert (state.peers[0].rx_bytes, state.peers[0].tx_bytes) == (92, 148)
    assert state.peers[0].allowed_ips == ("0.0.0.0/0",)
    assert "11" * 32 not in repr(state)


def test_parse_get_never_handshaken_is_zero() -> None:
    _, peer = generate_keypair()
    reply = f"public_key={key_to_hex(peer)}\nlast_handshake_time_sec=0\nerrno=0\n\n"
    assert parse_get(reply).peers[0].latest_handshake == 0.0


def test_errno_is_checked() -> None:
    check_errno("errno=0\n\n")
    with pytest.raises(TunnelFailed, match="errno=-22"):
        check_errno("errno=-22\n\n")
    with pytest.raises(TunnelFailed, match="no errno"):
        check_errno("")


# --- real wireguard-go, always inside a namespace made for the test --------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    name = unique_name("nwgt-wg-", limit=64)
    create_netns(name)
    try:
        yield name
    finally:
        # A failed snippet may leave wireguard-go running in the namespace, with its socket.
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        for sock in Path("/var/run/wireguard").glob(f"wt{RUN_ID}*.sock"):
            sock.unlink(missing_ok=True)
        delete_netns(name)


def kernel_wireguard_required() -> bool:
    """Inside the UML suite's kernel WireGuard must work: its absence is a failure there."""
    return os.environ.get("NORDWGD_SUITE") == "uml"


_PRELUDE = textwrap.dedent(
    """
    import asyncio, io, json, logging, os, sys, time
    from ipaddress import ip_address, ip_network, ip_interface
    from nordwgd.errors import TunnelFailed
    from nordwgd.model import Endpoint, Secret, TunnelParams
    from nordwgd.wireguard import open_backend
    from nordwgd.wireguard.uapi import DeviceConfig, PeerConfig, exchange, render_set, socket_path
    from nordwgd.wireguard.userspace import UserspaceBackend, find_instance
    log = io.StringIO()
    logging.basicConfig(stream=log, level=logging.DEBUG)
    secrets_in = json.loads(sys.stdin.read() or "{}")
    def link_up(name):
        import subprocess
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
    """
)


def _run(netns: str, body: str, secrets: dict[str, str] | None = None) -> dict[str, object]:
    code = _PRELUDE + textwrap.dedent(body)
    result = run_python(netns, code, input=json.dumps(secrets or {}))
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.root
def test_userspace_lifecycle_with_handshake(netns: str) -> None:
    a_private, a_public = generate_keypair()
    b_private, b_public = generate_keypair()
    ifa = unique_name("wt")
    ifb = unique_name("wt")
    out = _run(
        netns,
        f"""
        async def main():
            wg = UserspaceBackend()
            b = UserspaceBackend()
            result = {{}}
            index = await wg.create({ifa!r})
            await b.create({ifb!r})
            result["index"] = index
            result["exists"] = await wg.exists({ifa!r})
            await exchange(socket_path({ifb!r}), render_set(DeviceConfig(
                private_key=Secret(secrets_in["b"]), listen_port=51821,
                peers=(PeerConfig(public_key={a_public!r},
                                  allowed_ips=(ip_network("10.7.0.1/32"),)),))))
            result["before"] = (await wg.stats({ifa!r})).latest_handshake
            params = TunnelParams(
                private_key=Secret(secrets_in["a"]), address=ip_interface("10.7.0.1/32"),
                peer_public_key={b_public!r},
                endpoint=Endpoint(ip_address("127.0.0.1"), 51821),
                allowed_ips=(ip_network("10.7.0.2/32"),), dns=(), keepalive=1)
            await wg.configure({ifa!r}, params, 0x1234)
            await wg.configure({ifa!r}, params, 0x1234)  # configuring twice replaces, no error
            link_up({ifa!r}); link_up({ifb!r})
            for _ in range(500):
                stats = await wg.stats({ifa!r})
                if stats.latest_handshake and stats.rx_bytes:
                    break
                await asyncio.sleep(0.02)
            result["stats"] = [stats.latest_handshake, stats.rx_bytes, stats.tx_bytes]
            result["now"] = time.time()
            pid = find_instance({ifa!r})
            result["found_pid"] = pid
            proc = f"/proc/{{pid}}/"
            raw = open(proc + "cmdline", "rb").read() + open(proc + "environ", "rb").read()
            from nordwgd.wireguard.uapi import key_to_hex
            result["key_in_proc"] = any(
                k.encode() in raw for k in (secrets_in["a"], key_to_hex(secrets_in["a"])))
            await wg.destroy({ifa!r})
            await wg.destroy({ifa!r})
            await b.destroy({ifb!r})
            result["exists_after"] = await wg.exists({ifa!r})
            result["socket_after"] = socket_path({ifa!r}).exists()
            result["pid_after"] = find_instance({ifa!r})
            text = log.getvalue()
            result["key_in_log"] = secrets_in["a"] in text or key_to_hex(secrets_in["a"]) in text
            return result
        print(json.dumps(asyncio.run(main())))
        """,
        {"a": a_private, "b": b_private},
    )
    assert isinstance(out["index"], int) and out["index"] > 0
    assert out["exists"] is True
    assert out["before"] == 0.0
    handshake, rx, tx = out["stats"]  # type: ignore[misc]
    assert 0 < handshake <= out["now"]  # type: ignore[operator]
    assert rx > 0 and tx > 0
    assert isinstance(out["found_pid"], int)
    assert out["key_in_proc"] is False
    assert out["key_in_log"] is False
    assert out["exists_after"] is False
    assert out["socket_after"] is False
    assert out["pid_after"] is None


@pytest.mark.root
def test_userspace_refuses_an_existing_socket(netns: str) -> None:
    name = unique_name("wt")
    out = _run(
        netns,
        f"""
        import socket
        path = socket_path({name!r})
        path.parent.mkdir(parents=True, exist_ok=True)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()
        async def main():
            try:
                await UserspaceBackend().create({name!r})
            except TunnelFailed as error:
                return str(error)
            return None
        message = asyncio.run(main())
        still_there = path.exists()
        path.unlink()
        print(json.dumps({{"message": message, "still_there": still_there}}))
        """,
    )
    assert "exists already" in str(out["message"])
    assert out["still_there"] is True


@pytest.mark.root
def test_userspace_destroys_an_instance_it_did_not_start(netns: str) -> None:
    name = unique_name("wt")
    out = _run(
        netns,
        f"""
        import subprocess
        env = {{"PATH": os.environ["PATH"], "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}}
        earlier = subprocess.Popen(["wireguard-go", "-f", {name!r}], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):
            if socket_path({name!r}).exists():
                break
            time.sleep(0.01)
        async def main():
            fresh = UserspaceBackend()
            found = find_instance({name!r})
            existed = await fresh.exists({name!r})
            await fresh.destroy({name!r})
            return found, existed, await fresh.exists({name!r})
        found, existed, exists_after = asyncio.run(main())
        code = earlier.wait(timeout=10)
        print(json.dumps({{"found": found, "pid": earlier.pid, "existed": existed,
                          "exists_after": exists_after, "code": code}}))
        """,
    )
    assert out["found"] == out["pid"]
    assert out["existed"] is True
    assert out["exists_after"] is False


@pytest.mark.root
def test_userspace_reports_a_dead_socket_as_tunnel_failed(netns: str) -> None:
    name = unique_name("wt")
    out = _run(
        netns,
        f"""
        async def main():
            try:
                await UserspaceBackend().stats({name!r})
            except TunnelFailed as error:
                return str(error)
        print(json.dumps({{"message": asyncio.run(main())}}))
        """,
    )
    assert "control socket" in str(out["message"])


@pytest.mark.root
def test_open_backend_auto_and_kernel(netns: str) -> None:
    out = _run(
        netns,
        """
        try:
            kernel = open_backend("kernel").kind
        except TunnelFailed as error:
            kernel = "TunnelFailed: " + str(error)
        print(json.dumps({"auto": open_backend("auto").kind, "kernel": kernel}))
        """,
    )
    kernel = str(out["kernel"])
    if kernel.startswith("TunnelFailed"):
        assert not kernel_wireguard_required(), kernel
        assert "the kernel has no WireGuard support" in kernel
        assert out["auto"] == "userspace"
    else:
        assert out["auto"] == "kernel"


@pytest.mark.root
def test_kernel_backend_lifecycle(netns: str) -> None:
    a_private, _ = generate_keypair()
    _, b_public = generate_keypair()
    name = unique_name("wt")
    out = _run(
        netns,
        f"""
        try:
            wg = open_backend("kernel")
        except TunnelFailed as error:
            print(json.dumps({{"skip": str(error)}}))
            raise SystemExit(0)
        async def main():
            index = await wg.create({name!r})
            params = TunnelParams(
                private_key=Secret(secrets_in["a"]), address=ip_interface("10.7.0.1/32"),
                peer_public_key={b_public!r},
                endpoint=Endpoint(ip_address("192.0.2.1"), 51820),
                allowed_ips=(ip_network("0.0.0.0/0"),), dns=())
            await wg.configure({name!r}, params, 0x1234)
            stats = await wg.stats({name!r})
            existed = await wg.exists({name!r})
            await wg.destroy({name!r})
            await wg.destroy({name!r})
            return {{"index": index, "handshake": stats.latest_handshake, "existed": existed,
                    "exists_after": await wg.exists({name!r})}}
        print(json.dumps(asyncio.run(main())))
        """,
        {"a": a_private},
    )
    if "skip" in out:
        assert not kernel_wireguard_required(), out["skip"]
        pytest.skip(str(out["skip"]))
    assert isinstance(out["index"], int) and out["index"] > 0
    assert out["handshake"] == 0.0
    assert out["existed"] is True
    assert out["exists_after"] is False
