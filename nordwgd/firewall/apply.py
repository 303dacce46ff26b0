"""Applying a FirewallPolicy: one transaction, then a check that the kernel holds it.

nftables first (in-process through libnftables, else ``nft -f -``); iptables-restore where
nftables does not work, like the NordLynx container's detection. A rejected transaction leaves
the previous rules in force, so a failure never opens traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from nordwgd.errors import FirewallFailed, InvalidArgument
from nordwgd.firewall import iptables
from nordwgd.firewall.policy import FirewallPolicy
from nordwgd.firewall.render import BASE_CHAINS, TABLE_FAMILY, TABLE_NAME, render, tag

log = logging.getLogger(__name__)

BackendName = Literal["auto", "nftables", "iptables"]
_OPEN = FirewallPolicy(state="disconnected", block=False)
# Chains and sets only: cheap even with thousands of set elements (a terse listing skips them).
# (nft 1.0.6 lists chains per family only; the sets listing fails when our table is absent.)
_LIST_TABLE = (f"list sets table {TABLE_FAMILY} {TABLE_NAME}", f"list chains {TABLE_FAMILY}")
MARKER_SET = "marker"
# iptables-restore waits this long for the xtables lock held by another program, and every
# firewall command gets this long in all: a firewall change that hangs must fail (closed),
# never park the daemon.
LOCK_WAIT = 5
COMMAND_TIMEOUT = 20.0


class _Engine(Protocol):
    kind: str

    async def apply(self, policy: FirewallPolicy) -> None: ...
    async def applied(self) -> bool: ...


async def _run(argv: Sequence[str], stdin: str = "") -> tuple[int, str, str]:
    """Run ``argv``; a command that has not ended after COMMAND_TIMEOUT is killed (rc 124)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        return 127, "", f"{argv[0]}: {error.strerror or error}"
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, err = await process.communicate(stdin.encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        return 124, "", f"{argv[0]}: no answer within {COMMAND_TIMEOUT:g} s; killed"
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class _Nft:
    """nft commands in this process (libnftables) or through the nft binary.

    Commands must not overlap (the Firewall's lock sees to that): the libnftables context is
    shared by all of them.
    """

    def __init__(self, in_process: bool) -> None:
        self.in_process = in_process
        # Made on first use and kept: releasing a context frees its whole cache, about 14 ms
        # after a transaction with 10,000 set elements. The kernel's generation id still makes
        # every command of a kept context see the current ruleset.
        self._context: Any = None

    async def cmd(self, script: str, *, json_output: bool = False) -> tuple[int, str, str]:
        """Run ``script``; JSON listings are terse (sets without their elements)."""
        if self.in_process:
            return await asyncio.to_thread(self._libnftables_cmd, script, json_output)
        return await _run(["nft", *(["-j", "-t"] if json_output else []), "-f", "-"], script)

    async def render_and_run(self, policy: FirewallPolicy) -> tuple[int, str, str]:
        """Render ``policy`` and run the script, both off the event loop."""
        if self.in_process:
            return await asyncio.to_thread(
                lambda: self._libnftables_cmd(render(policy), json_output=False)
            )
        return await self.cmd(await asyncio.to_thread(render, policy))

    def _libnftables_cmd(self, script: str, json_output: bool) -> tuple[int, str, str]:
        if self._context is None:
            import nftables

            self._context = nftables.Nftables()
        context = self._context
        context.set_json_output(json_output)
        # The verification reads chains, hooks and rule markers; listing thousands of set
        # elements would cost as much as the transaction itself.
        context.set_terse_output(json_output)
        rc, out, err = context.cmd(script)
        return int(rc), str(out), str(err)


def _libnftables_available() -> bool:
    try:
        import nftables  # noqa: F401
    except ImportError:
        return False
    return True


class _NftablesEngine:
    kind = "nftables"

    def __init__(self, nft: _Nft) -> None:
        self._nft = nft

    async def apply(self, policy: FirewallPolicy) -> None:
        rc, _, err = await self._nft.render_and_run(policy)
        if rc != 0:
            raise FirewallFailed(f"nft rejected the ruleset ({policy.state}): {err.strip()}")
        problem = await self._check(policy)
        if problem:
            raise FirewallFailed(f"firewall verification failed ({policy.state}): {problem}")

    async def applied(self) -> bool:
        return await self._table() is not None

    async def _table(self) -> list[dict[str, Any]] | None:
        objects: list[dict[str, Any]] = []
        for command in _LIST_TABLE:
            rc, out, err = await self._nft.cmd(command, json_output=True)
            if rc != 0:
                if "No such file or directory" in err:
                    return None
                raise FirewallFailed(f"cannot list the nordwgd table: {err.strip()}")
            try:
                listed: list[dict[str, Any]] = json.loads(out)["nftables"]
            except (ValueError, KeyError, TypeError) as error:
                raise FirewallFailed(f"cannot read the nordwgd table listing: {error}") from error
            objects += [
                item
                for item in listed
                if isinstance(item, dict)
                and any(
                    isinstance(value, dict) and value.get("table") == TABLE_NAME
                    for value in item.values()
                )
            ]
        return objects

    async def _check(self, policy: FirewallPolicy) -> str | None:
        objects = await self._table()
        if not policy.block:
            return None if objects is None else "the nordwgd table is still present"
        if objects is None:
            return "the nordwgd table is missing"
        return check_listing(policy, objects)


def check_listing(policy: FirewallPolicy, objects: list[dict[str, Any]]) -> str | None:
    """None when the JSON listing of our table enforces ``policy``, else what is wrong.

    The policy marker proves that the transaction of this very policy is in force: it is the
    comment of the marker set in a chains-and-sets listing, or in a full listing also the
    comment of a rule in every base chain.
    """
    marker = tag(policy)
    chains = {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}
    marked = {o["rule"]["chain"] for o in objects if o.get("rule", {}).get("comment") == marker}
    marker_set = any(
        o["set"].get("name") == MARKER_SET and o["set"].get("comment") == marker
        for o in objects
        if "set" in o
    )
    for name in BASE_CHAINS:
        chain = chains.get(name)
        if chain is None:
            return f"chain {name} is missing"
        if chain.get("policy") != "drop" or chain.get("hook") != name:
            return f"chain {name} does not drop by default on hook {name}"
        if not marker_set and name not in marked:
            return f"chain {name} does not carry the policy marker {marker!r}"
    return None


class _IptablesEngine:
    kind = "iptables"

    def __init__(self) -> None:
        self._tools = {family: _iptables_tools(family) for family in (4, 6)}

    async def apply(self, policy: FirewallPolicy) -> None:
        for family in (4, 6):
            restore, save = self._tools[family]
            saved = await self._save(save)
            script = iptables.render_restore(policy, family, saved)
            if script:
                rc, _, err = await _run([restore, "-w", str(LOCK_WAIT), "--noflush"], script)
                if rc != 0:
                    raise FirewallFailed(
                        f"{restore} rejected the ruleset ({policy.state}): {err.strip()}"
                    )
            problem = iptables.verify_saved(policy, await self._save(save))
            if problem:
                raise FirewallFailed(
                    f"firewall verification failed ({policy.state}, IPv{family}): {problem}"
                )

    async def applied(self) -> bool:
        saved = await self._save(self._tools[4][1])
        return bool(saved.chains)

    async def _save(self, save: str) -> iptables.SavedState:
        rc, out, err = await _run([save])
        if rc != 0:
            raise FirewallFailed(f"{save} failed: {err.strip()}")
        return iptables.parse_save(out)


def _iptables_tools(family: int) -> tuple[str, str]:
    """(restore, save) commands; the legacy ones when present, since nftables did not work."""
    prefix = "iptables" if family == 4 else "ip6tables"
    for variant in (f"{prefix}-legacy", prefix):
        if shutil.which(f"{variant}-restore") and shutil.which(f"{variant}-save"):
            return f"{variant}-restore", f"{variant}-save"
    return f"{prefix}-restore", f"{prefix}-save"


async def _detect(requested: BackendName) -> _Engine:
    if requested in ("auto", "nftables"):
        for nft in (_Nft(in_process=True), _Nft(in_process=False)):
            if nft.in_process and not _libnftables_available():
                continue
            rc, _, err = await nft.cmd("list tables")
            if rc == 0:
                return _NftablesEngine(nft)
            log.debug("nftables (%s) unusable: %s", "libnftables" if nft.in_process else "nft", err)
        if requested == "nftables":
            raise FirewallFailed("nftables does not work here (nft list tables failed)")
    engine = _IptablesEngine()
    save = engine._tools[4][1]
    rc, _, err = await _run([save])
    if rc != 0:
        raise FirewallFailed(
            f"no usable firewall: nftables failed and {save} failed: {err.strip()}"
        )
    return engine


class Firewall:
    """The kill-switch table: apply a policy as one verified transaction, or remove it."""

    def __init__(self, backend: BackendName = "auto") -> None:
        if backend not in ("auto", "nftables", "iptables"):
            raise InvalidArgument(f"firewall backend {backend!r} is not auto, nftables or iptables")
        self._requested: BackendName = backend
        self._engine: _Engine | None = None
        self._lock = asyncio.Lock()

    @property
    def kind(self) -> str | None:
        """The backend in use once detected ("nftables" | "iptables")."""
        return self._engine.kind if self._engine else None

    async def apply(self, policy: FirewallPolicy) -> None:
        """Make the kernel enforce ``policy`` in one transaction; raises FirewallFailed."""
        async with self._lock:
            engine = await self._get_engine()
            log.info(
                "firewall: applying %s (%s, %s) via %s",
                policy.state,
                policy.blocking,
                policy.digest,
                engine.kind,
            )
            await engine.apply(policy)

    async def remove(self) -> None:
        """Delete nordwgd's rules (traffic open); idempotent."""
        await self.apply(_OPEN)

    async def applied(self) -> bool:
        """True when nordwgd's table (or chains) exist in the kernel."""
        async with self._lock:
            return await (await self._get_engine()).applied()

    async def _get_engine(self) -> _Engine:
        if self._engine is None:
            self._engine = await _detect(self._requested)
            log.info("firewall: using %s", self._engine.kind)
        return self._engine
