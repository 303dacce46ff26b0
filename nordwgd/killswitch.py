"""Early-boot kill switch: ``python -m nordwgd.killswitch`` (nordwgd-killswitch.service).

Runs before network-pre.target, so before any interface is configured. When Lockdown is on it
applies the blocking policy of the ``error`` state (nothing but loopback, the on-link DHCP/NDP
basics and the pinned API addresses), so no packet leaves between network bring-up and the
start of nordwgd.service, which then replaces the table whole. With Lockdown off it does nothing.

Whether Lockdown is on is read as the daemon reads it, and a broken config does not hide it:

1. the choice stored by SetLockdown (``settings.json`` in the state directory) wins over the
   config, whatever else the config holds; a stored file that cannot be read counts as on;
2. else ``network.lockdown`` of the config, also when the config parses as TOML but fails
   validation elsewhere (then the pinned API addresses and the mark are the defaults: the
   daemon refuses that config anyway, so only blocking matters);
3. only when neither can be read (the config is not TOML, or cannot be read, and nothing is
   stored) may traffic stay open, and that is said loudly: an error on stderr and in the
   journal, and the unit fails.

The state directory is ``paths.state_dir`` of the config when it can be read, else
``$STATE_DIRECTORY`` (set by systemd for units with StateDirectory=), else /var/lib/nordwgd.
A config problem always ends the unit in failure, blocking or not, so that it is seen.

It never replaces a table that is already there: that one belongs to a running daemon (or to
one that died, and was left blocking on purpose).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nordwgd import systemd
from nordwgd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    PathsConfig,
    load_config,
    read_config_bytes,
)
from nordwgd.errors import ConfigError, NordwgdError
from nordwgd.firewall import Firewall, FirewallPolicy, policy_for_state
from nordwgd.manager import SETTINGS_FILE, Settings, load_settings
from nordwgd.model import IPAddress

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
    # The provider's own API is what the daemon will ask first: only that is let through.
    if config.provider == "pia":
        api_addresses: tuple[IPAddress, ...] = ()
        api_extra = tuple(
            dict.fromkeys(
                (
                    *((meta.address, 443) for meta in config.pia.meta),
                    *((address, 443) for address in config.pia.api_addresses),
                )
            )
        )
    else:
        api_addresses, api_extra = config.api.addresses, ()
    return policy_for_state(
        "error",
        lockdown=True,
        allow_lan=settings.allow_lan,
        lan=network.lan,
        endpoint=None,
        api_addresses=api_addresses,
        api_port=config.api.port,
        api_extra=api_extra,
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


@dataclass(frozen=True)
class BootInputs:
    """What the kill switch decides with. ``settings`` None: nothing can tell whether Lockdown
    is wanted. ``problem``: why the config could not be used whole (None when valid)."""

    config: Config
    settings: Settings | None
    problem: str | None = None


def read_inputs(path: Path, environ: Mapping[str, str] | None = None) -> BootInputs:
    """The config and the stored choices, as far as they can be read (see the module doc)."""
    try:
        config = load_config(path)
    except ConfigError as error:
        problem = str(error)
    else:
        return BootInputs(config, load_settings(config))
    document = _toml_document(path)
    network = _table(document, "network")
    config = Config(paths=PathsConfig(state_dir=_state_dir(document, environ)))
    if (config.paths.state_dir / SETTINGS_FILE).exists():
        return BootInputs(config, load_settings(config), problem)
    lockdown, allow_lan = network.get("lockdown"), network.get("allow_lan", False)
    if not isinstance(lockdown, bool):
        return BootInputs(config, None, problem)
    return BootInputs(config, Settings(lockdown, allow_lan is True), problem)


def _toml_document(path: Path) -> Mapping[str, object]:
    try:
        data = read_config_bytes(path) or b""
        return tomllib.loads(data.decode("utf-8"))
    except (ConfigError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _table(document: Mapping[str, object], name: str) -> Mapping[str, object]:
    table = document.get(name)
    return table if isinstance(table, dict) else {}


def _state_dir(document: Mapping[str, object], environ: Mapping[str, str] | None) -> Path:
    configured = _table(document, "paths").get("state_dir")
    if isinstance(configured, str) and Path(configured).is_absolute():
        return Path(configured)
    systemd_dirs = (os.environ if environ is None else environ).get("STATE_DIRECTORY", "")
    first = systemd_dirs.split(":")[0]
    return Path(first) if first.startswith("/") else PathsConfig().state_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nordwgd-killswitch",
        description="Block all traffic at boot when nordwgd's lockdown is on.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"config file (default: {DEFAULT_CONFIG_PATH})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("nordwgd-killswitch: must run as root (it changes the firewall)", file=sys.stderr)
        return EX_NOPERM
    inputs = read_inputs(args.config)
    handler = systemd.setup_logging(inputs.config.log_level)
    if inputs.settings is None:
        _loudly(
            handler,
            f"{inputs.problem}; nothing tells whether lockdown is wanted: nothing blocked, "
            "traffic is open until the config is fixed",
        )
        systemd.status("config unreadable; nothing blocked")
        return EX_CONFIG
    if inputs.problem is not None:
        _loudly(handler, f"{inputs.problem}; lockdown read from what could be read")
    try:
        outcome = asyncio.run(engage(inputs.config, settings=inputs.settings))
    except NordwgdError as error:
        _loudly(handler, f"kill switch failed: {error.nick}: {error}")
        return EX_FAILURE
    logger.info("%s", outcome)
    systemd.status(outcome)
    if inputs.problem is not None:
        print(f"nordwgd-killswitch: {outcome}", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


def _loudly(handler: logging.Handler, message: str) -> None:
    """To the journal through logging, and to stderr in any case (once)."""
    logger.error("%s", message)
    if getattr(handler, "stream", None) is not sys.stderr:
        print(f"nordwgd-killswitch: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
