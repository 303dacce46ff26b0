"""Early-boot kill switch: ``python -m nordwgd.killswitch`` (nordwgd-killswitch.service).

Runs before network-pre.target, so before any interface is configured. When the config has
``lockdown = true`` it applies the blocking policy of the ``error`` state (nothing but loopback,
DHCP/NDP and the pinned API addresses), so no packet leaves between network bring-up and the
start of nordwgd.service, which then replaces the table whole. With lockdown off it does
nothing.

Lockdown and AllowLan are read as the daemon reads them: the choices stored by SetLockdown and
SetAllowLan in the state directory win over the config, and a stored file that cannot be read
counts as Lockdown on.

It never replaces a table that is already there: that one belongs to a running daemon (or to
one that died, and was left blocking on purpose).

An invalid config is reported and nothing is applied: blocking on a typo would cut a remote
machine off, and nordwgd.service refuses to start on the same error, which is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nordwgd import systemd
from nordwgd.config import DEFAULT_CONFIG_PATH, Config, load_config
from nordwgd.errors import ConfigError, NordwgdError
from nordwgd.firewall import Firewall, FirewallPolicy, policy_for_state
from nordwgd.manager import Settings, load_settings

logger = logging.getLogger("nordwgd.killswitch")

EX_OK = 0
EX_FAILURE = 1
EX_NOPERM = 77
EX_CONFIG = 78


def blocking_policy(config: Config, settings: Settings | None = None) -> FirewallPolicy | None:
    """The policy to apply at boot, or None when lockdown is off.

    ``settings`` are the stored choices (``load_settings``); without them the config decides.
    """
    network = config.network
    settings = settings or Settings(network.lockdown, network.allow_lan)
    if not settings.lockdown:
        return None
    return policy_for_state(
        "error",
        lockdown=True,
        allow_lan=settings.allow_lan,
        lan=network.lan,
        endpoint=None,
        api_addresses=config.api.addresses,
        api_port=config.api.port,
        fwmark=network.fwmark,
        tunnel_interface=None,
        tunnel_dns=(),
        ipv6_tunnel=False,
    )


async def engage(
    config: Config, firewall: Firewall | None = None, settings: Settings | None = None
) -> str:
    """Apply the boot policy if needed; returns what was done (for the log and the status)."""
    policy = blocking_policy(config, settings)
    if policy is None:
        return "lockdown is off; nothing blocked"
    firewall = firewall or Firewall("auto")
    if await firewall.applied():
        return "the nordwgd table already exists; left as it is"
    await firewall.apply(policy)
    return "lockdown is on; all traffic blocked until nordwgd connects"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nordwgd-killswitch",
        description="Block all traffic at boot when nordwgd's lockdown is on.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="PATH")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("nordwgd-killswitch: must run as root (it changes the firewall)", file=sys.stderr)
        return EX_NOPERM
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"nordwgd-killswitch: {error}; nothing blocked", file=sys.stderr)
        return EX_CONFIG
    systemd.setup_logging(config.log_level)
    try:
        outcome = asyncio.run(engage(config, settings=load_settings(config)))
    except NordwgdError as error:
        logger.error("kill switch failed: %s: %s", error.nick, error)
        print(f"nordwgd-killswitch: {error.nick}: {error}", file=sys.stderr)
        return EX_FAILURE
    logger.info("%s", outcome)
    systemd.status(outcome)
    return EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
