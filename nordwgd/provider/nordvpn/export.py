"""``nordwgd export-config``: a wg-quick file for one NordLynx server, written locally as root.

The file holds the account's NordLynx private key, and secrets never cross D-Bus, so this is not
a daemon method: it runs as root on the machine, reads the token the way the daemon does
(credential, ``token_file`` or the stored login), asks the API for the private key and the
server, and writes the file with mode 0600. It needs no running daemon.

    nordwgd export-config --server de1001 --output /root/de1001.conf
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nordwgd.config import DEFAULT_CONFIG_PATH, Config, load_config
from nordwgd.errors import ConfigError, InvalidArgument, NordwgdError, NotLoggedIn
from nordwgd.files import write_atomic
from nordwgd.model import Secret
from nordwgd.provider.nordvpn.api import NordVpnApi
from nordwgd.provider.nordvpn.catalog import Catalog
from nordwgd.provider.nordvpn.wgconf import render_wg_quick, tunnel_params
from nordwgd.token import load_token

PROG = "nordwgd export-config"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_AUTHORIZED = 4
EXIT_NOT_LOGGED_IN = 5
EXIT_CONFIG = 78


async def export_config(
    config: Config,
    hostname: str,
    output: Path,
    *,
    token: Secret | None = None,
    fwmark: int | None = None,
) -> str:
    """Write the wg-quick file for ``hostname`` to ``output`` (0600); returns the server's name.

    ``token`` defaults to the one the daemon would use. ``fwmark`` marks the API sockets so
    that an active kill switch lets them through, as it does the daemon's.
    """
    if token is None:
        token = await asyncio.to_thread(load_token, config)
    if token is None:
        raise NotLoggedIn(
            "no NordVPN access token: log in with 'nordwgctl login' or set token_file"
        )
    catalog = await asyncio.to_thread(Catalog.load)
    country = catalog.country_of_hostname(hostname)
    api = NordVpnApi(config.api, fwmark=fwmark)
    try:
        credentials = await api.credentials(token)
        server = await api.server_by_hostname(hostname, country.id)
    finally:
        await api.aclose()
    params = tunnel_params(
        credentials,
        server,
        dns=config.dns.servers,
        ipv6_tunnel=config.network.ipv6 == "tunnel",
    )
    await asyncio.to_thread(write_private, output, render_wg_quick(params))
    return server.hostname


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, never readable by others, not even for a moment."""
    if path.is_dir():
        raise InvalidArgument(f"{path} is a directory")
    try:
        write_atomic(path, text.encode(), mode=0o600)
    except OSError as error:  # a full disk, a quota, no such directory: the user's to fix
        raise InvalidArgument(f"cannot write {path}: {error.strerror or error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a wg-quick configuration for a NordLynx server (mode 0600). "
        "Runs as root: it reads the access token and receives the private key.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"config file (default: {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--server", required=True, metavar="HOST", help='server hostname, e.g. "de1001"'
    )
    parser.add_argument(
        "--output", required=True, type=Path, metavar="FILE", help="the file to write"
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(f"{PROG}: must run as root (it reads the access token)", file=sys.stderr)
        return EXIT_NOT_AUTHORIZED
    try:
        config = load_config(args.config)
        hostname = asyncio.run(
            export_config(config, args.server, args.output, fwmark=config.network.fwmark)
        )
    except ConfigError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except NotLoggedIn as error:
        print(f"{PROG}: not logged in: {error}", file=sys.stderr)
        return EXIT_NOT_LOGGED_IN
    except InvalidArgument as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NordwgdError as error:
        print(f"{PROG}: {error.nick}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    print(f"wrote {args.output} for {hostname} (mode 0600: it holds the private key)")
    return EXIT_OK
