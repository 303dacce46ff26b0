"""The config loader: defaults, every accepted key, and a clear error for every kind of mistake."""

from __future__ import annotations

import dataclasses
import os
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from nordwgd.config import (
    KEY_TO_FIELD,
    ApiConfig,
    Config,
    DnsConfig,
    HealthConfig,
    LocationConfig,
    NetworkConfig,
    PathsConfig,
    PiaConfig,
    PortForwardConfig,
    SplitConfig,
    known_keys,
    load_config,
)
from nordwgd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "data" / "nordwgd.toml.example"

SECTION_CLASSES: dict[str, type[object]] = {
    "location": LocationConfig,
    "dns": DnsConfig,
    "network": NetworkConfig,
    "health": HealthConfig,
    "api": ApiConfig,
    "split": SplitConfig,
    "paths": PathsConfig,
    "pia": PiaConfig,
    "port_forward": PortForwardConfig,
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nordwgd.toml"
    path.write_text(text)
    return path


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.toml")
    assert config == Config()
    assert config.source is None


def test_empty_file_gives_defaults_and_records_source(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    config = load_config(path)
    assert dataclasses.replace(config, source=None) == Config()
    assert config.source == path


def test_every_key_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
token_file = "/etc/nordwgd/token"
log_level = "debug"

[location]
country = "Germany"
city = ["Frankfurt", "Berlin"]
group = "p2p"
server = ["de1001.nordvpn.com"]
random_top = 5

[dns]
servers = ["192.0.2.53", "2001:db8::53"]
resolv_conf = "/tmp/resolv.conf"

[network]
interface = "wg-nord0"
backend = "userspace"
mode = "gateway"
lockdown = true
allow_lan = true
lan = ["192.168.1.0/24", "fd00::/64", "169.254.0.0/16"]
forward_from = ["10.10.0.0/16"]
ipv6 = "tunnel"
fwmark = 4294967295
table = 1000
namespace = "vpn.0"

[health]
urls = ["https://example.com/", "http://192.0.2.1:8080/ping"]
attempts = 1
interval = 30
timeout = 2.5
handshake_timeout = 1
handshake_max_age = 200.0

[api]
host = "api.example.test"
addresses = ["198.51.100.10", "2001:db8::1"]
port = 8443
ca_file = "/etc/nordwgd/ca.pem"
timeout = 3
attempts = 2

[paths]
state_dir = "/srv/state"
runtime_dir = "/run/other"
""",
    )
    config = load_config(path)
    assert config == Config(
        location=LocationConfig(
            countries=("Germany",),
            cities=("Frankfurt", "Berlin"),
            groups=("p2p",),
            servers=("de1001.nordvpn.com",),
            random_top=5,
        ),
        dns=DnsConfig(
            servers=(IPv4Address("192.0.2.53"), IPv6Address("2001:db8::53")),
            resolv_conf=Path("/tmp/resolv.conf"),
        ),
        network=NetworkConfig(
            interface="wg-nord0",
            backend="userspace",
            mode="gateway",
            lockdown=True,
            allow_lan=True,
            lan=(
                IPv4Network("192.168.1.0/24"),
                IPv6Network("fd00::/64"),
                IPv4Network("169.254.0.0/16"),
            ),
            forward_from=(IPv4Network("10.10.0.0/16"),),
            ipv6="tunnel",
            fwmark=4294967295,
            table=1000,
            namespace="vpn.0",
        ),
        health=HealthConfig(
            urls=("https://example.com/", "http://192.0.2.1:8080/ping"),
            attempts=1,
            interval=30.0,
            timeout=2.5,
            handshake_timeout=1.0,
            handshake_max_age=200.0,
        ),
        api=ApiConfig(
            host="api.example.test",
            addresses=(IPv4Address("198.51.100.10"), IPv6Address("2001:db8::1")),
            port=8443,
            ca_file=Path("/etc/nordwgd/ca.pem"),
            timeout=3.0,
            attempts=2,
        ),
        paths=PathsConfig(state_dir=Path("/srv/state"), runtime_dir=Path("/run/other")),
        token_file=Path("/etc/nordwgd/token"),
        log_level="debug",
        source=path,
    )
    assert isinstance(config.health.interval, float)


def test_example_yields_exactly_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert dataclasses.replace(config, source=None) == Config()


def test_example_documents_every_field() -> None:
    text = EXAMPLE.read_text()
    for section, cls in SECTION_CLASSES.items():
        assert f"[{section}]" in text
        field_to_key = {v: k for k, v in KEY_TO_FIELD.get(section, {}).items()}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = field_to_key.get(f.name, f.name)
            assert key in known_keys()[section]
            # Each key appears as an assignment (commented out when its default is "none").
            assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), f"{section}.{key}"
    for f in dataclasses.fields(Config):
        if f.name in SECTION_CLASSES or f.name == "source":
            continue
        assert re.search(rf"^(# )?{f.name} = ", text, re.MULTILINE), f.name


def test_example_has_a_comment_above_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^(# )?[a-z_]+ = ", line):
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"


def test_a_single_string_and_an_array_are_both_accepted(tmp_path: Path) -> None:
    one = load_config(write(tmp_path, '[location]\ncountry = "DE"\n'))
    many = load_config(write(tmp_path, '[location]\ncountry = ["DE", "FR"]\n'))
    assert one.location.countries == ("DE",)
    assert many.location.countries == ("DE", "FR")


# (text, line, key, words the message must hold)
BAD_CONFIGS = [
    ("colour = 1\n", 1, "colour", "unknown key"),
    ("\n[netwrk]\nmode = 'host'\n", 2, "netwrk", "did you mean 'network'"),
    ("[network]\n\nbakend = 'auto'\n", 3, "network.bakend", "did you mean 'backend'"),
    ("network = 3\n", 1, "network", "must be a table [network]"),
    ("[network]\nbackend = 'fast'\n", 2, "network.backend", "one of auto, kernel, userspace"),
    ("[network]\nmode = 'router'\n", 2, "network.mode", "one of host, namespace, gateway"),
    ("[network]\nipv6 = 'allow'\n", 2, "network.ipv6", "one of block, tunnel"),
    ("[network]\ninterface = 'a-very-long-name0'\n", 2, "network.interface", "1 to 15"),
    ("[network]\ninterface = 'wg 0'\n", 2, "network.interface", "interface name"),
    ("[network]\ninterface = 'wg/0'\n", 2, "network.interface", "interface name"),
    ("[network]\ninterface = ''\n", 2, "network.interface", "interface name"),
    ("[network]\nlockdown = 'yes'\n", 2, "network.lockdown", "boolean"),
    ("[network]\nallow_lan = 1\n", 2, "network.allow_lan", "boolean"),
    ("[network]\nlan = '192.168.1.0/24'\n", 2, "network.lan", "must be an array"),
    ("[network]\nlan = ['8.8.8.0/24']\n", 2, "network.lan[0]", "not a private range"),
    ("[network]\nlan = ['0.0.0.0/0']\n", 2, "network.lan[0]", "not a private range"),
    ("[network]\nlan = ['2001:db8::/32']\n", 2, "network.lan[0]", "not a private range"),
    ("[network]\nlan = ['10.0.0.0/7']\n", 2, "network.lan[0]", "not a private range"),
    ("[network]\nlan = ['192.168.1.1/24']\n", 2, "network.lan[0]", "192.168.1.0/24"),
    ("[network]\nlan = ['10.0.0.0/8', 'lan']\n", 2, "network.lan[1]", "CIDR"),
    ("[network]\nforward_from = ['100.64.0.0/10']\n", 2, "network.forward_from[0]", "private"),
    ("[network]\nfwmark = 0\n", 2, "network.fwmark", "from 1 to 4294967295"),
    ("[network]\nfwmark = 4294967296\n", 2, "network.fwmark", "from 1 to 4294967295"),
    ("[network]\nfwmark = '0xca6c'\n", 2, "network.fwmark", "must be an integer"),
    ("[network]\ntable = 254\n", 2, "network.table", "except 253, 254, 255"),
    ("[network]\ntable = 0\n", 2, "network.table", "from 1 to 4294967295"),
    ("[network]\ntable = 1.5\n", 2, "network.table", "must be an integer"),
    ("[network]\nnamespace = '../x'\n", 2, "network.namespace", "namespace name"),
    ("[network]\nnamespace = '..'\n", 2, "network.namespace", "namespace name"),
    ("[network]\nnamespace = ''\n", 2, "network.namespace", "namespace name"),
    ("[network]\nnamespace = 7\n", 2, "network.namespace", "must be a string"),
    ("[location]\ncountry = 81\n", 2, "location.country", "string or an array"),
    ("[location]\ncity = ['Paris', '']\n", 2, "location.city[1]", "must not be empty"),
    ("[location]\nrandom_top = -1\n", 2, "location.random_top", "from 0"),
    ("[location]\nrandom_top = true\n", 2, "location.random_top", "must be an integer"),
    ("[dns]\nservers = ['one.one.one.one']\n", 2, "dns.servers[0]", "IPv4 or IPv6 address"),
    ("[dns]\nservers = []\n", 2, "dns.servers", "must not be empty"),
    ("[dns]\nresolv_conf = 'resolv.conf'\n", 2, "dns.resolv_conf", "absolute path"),
    ("[health]\nurls = ['ftp://example.com/']\n", 2, "health.urls[0]", "http:// or https://"),
    ("[health]\nurls = ['https://']\n", 2, "health.urls[0]", "host name"),
    ("[health]\nattempts = 0\n", 2, "health.attempts", "from 1"),
    ("[health]\ninterval = 0\n", 2, "health.interval", "positive number of seconds"),
    ("[health]\ntimeout = -1.5\n", 2, "health.timeout", "positive number of seconds"),
    ("[health]\nhandshake_timeout = nan\n", 2, "health.handshake_timeout", "positive"),
    ("[health]\nhandshake_max_age = inf\n", 2, "health.handshake_max_age", "positive"),
    ("[health]\ninterval = '60s'\n", 2, "health.interval", "number of seconds"),
    ("[health]\ninterval = false\n", 2, "health.interval", "number of seconds"),
    ("[api]\nhost = ''\n", 2, "api.host", "host name"),
    ("[api]\nhost = 'api nordvpn com'\n", 2, "api.host", "host name"),
    ("[api]\naddresses = []\n", 2, "api.addresses", "must not be empty"),
    ("[api]\naddresses = ['api.nordvpn.com']\n", 2, "api.addresses[0]", "address"),
    ("[api]\nport = 0\n", 2, "api.port", "from 1 to 65535"),
    ("[api]\nport = 65536\n", 2, "api.port", "from 1 to 65535"),
    ("[api]\nca_file = 'ca.pem'\n", 2, "api.ca_file", "absolute path"),
    ("[api]\ntimeout = 0\n", 2, "api.timeout", "positive"),
    ("[api]\nattempts = 0\n", 2, "api.attempts", "from 1"),
    ("[paths]\nstate_dir = 'state'\n", 2, "paths.state_dir", "absolute path"),
    ("[paths]\nruntime_dir = 5\n", 2, "paths.runtime_dir", "must be a string"),
    ("token_file = 'token'\n", 1, "token_file", "absolute path"),
    ("log_level = 'verbose'\n", 1, "log_level", "one of debug, info, warning, error"),
    # Dotted keys and later sections are found on their own lines.
    ("[dns]\n\n[network]\nmode = 'host'\n\n\nipv6 = 'x'\n", 7, "network.ipv6", "one of"),
    ("network.backend = 'fast'\n", 1, "network.backend", "one of"),
    ('[api]\n"port" = "443"\n', 2, "api.port", "must be an integer"),
    # Inside an inline table the key has no line of its own: the table's line is named.
    ("\nnetwork = { backend = 'fast' }\n", 2, "network.backend", "one of"),
    # An element of a multi-line array is named by index, at the array's line.
    ("[api]\naddresses = [\n  '192.0.2.1',\n  'nope',\n]\n", 2, "api.addresses[1]", "address"),
    # A key inside a multi-line string is not mistaken for the real one.
    (
        '[location]\ncountry = """\nrandom_top = 1\n"""\nrandom_top = -1\n',
        5,
        "location.random_top",
        "from 0",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "words"), BAD_CONFIGS)
def test_bad_config_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:{line}: {key}: "), message
    assert words in message


def test_wrong_value_is_quoted_with_its_type(tmp_path: Path) -> None:
    path = write(tmp_path, "[network]\n\n\n\n\n\n\n\n\n\n\nbackend = 'fast'\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"{path}:12: network.backend: must be one of auto, kernel, userspace (got string 'fast')"
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [("[network\n", 1), ("a = 1\nb = \n", 2), ("[dns]\nservers = [\n", 2), ("x = 1\nx = 2\n", 2)],
)
def test_toml_syntax_error_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}:{line}: invalid TOML: ")


def test_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nordwgd.toml"
    path.write_bytes(b'log_level = "info"\n# \xff\n')
    with pytest.raises(ConfigError, match=r":2: the config file is not valid UTF-8"):
        load_config(path)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path)  # a directory
    if os.geteuid() != 0:  # root reads files whatever their mode
        path = write(tmp_path, "")
        path.chmod(0)
        with pytest.raises(ConfigError, match="cannot read the config file"):
            load_config(path)
