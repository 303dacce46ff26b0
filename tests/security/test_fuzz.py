"""Fuzzing what enters nordwgd from outside: config files, API answers, D-Bus arguments.

Every entry point must answer bad input with a typed ``NordwgdError`` naming the problem and
nothing else (no KeyError, TypeError, RecursionError, ... that would become a traceback).
tests/test_parse_fuzz.py already throws random JSON, random bytes and one-place mutations of
each fixture at the API parsers; this module adds what it does not cover: the config loader
(random TOML text, random bytes, structured mutations of the shipped example), answers cut
short anywhere, several mutations at once in a whole server list, random objects straight into
``parse_server``, and the argument checks between the bus and the Manager (D-Bus converters,
option checks, token and host name validation, catalog name resolution).
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nordwgd import errors
from nordwgd.bus import convert
from nordwgd.config import Config, load_config, parse_config
from nordwgd.provider.nordvpn import parse
from nordwgd.provider.nordvpn.catalog import Catalog
from nordwgd.provider.nordvpn.planner import OPTION_KEYS, normalize_hostname
from nordwgd.target import check_options
from nordwgd.testing.fleet import fixture_bytes
from nordwgd.testing.world import to_toml
from nordwgd.token import validate_token
from tests.security.ledger import ScenarioRecorder

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FEW = settings(FUZZ, max_examples=200)

CONFIG_PATH = Path("/etc/nordwgd/fuzzed.toml")
EXAMPLE_TEXT = resources.files("nordwgd").joinpath("data", "nordwgd.toml.example").read_text()
EXAMPLE: dict[str, Any] = tomllib.loads(EXAMPLE_TEXT)


class Counter:
    """Counts the examples a property saw, for the ledger."""

    def __init__(self) -> None:
        self.examples = 0

    def __call__(self) -> None:
        self.examples += 1


@pytest.fixture
def tried(ledger: ScenarioRecorder) -> Iterator[Counter]:
    counter = Counter()
    yield counter
    ledger.bad_inputs(counter.examples)


def only_typed(call: Callable[[], object]) -> object:
    """Run ``call``; a NordwgdError is an acceptable answer, any other exception escapes."""
    try:
        return call()
    except errors.NordwgdError as error:
        assert error.message, f"{type(error).__name__} without a message"
        return error


# --- the config loader --------------------------------------------------------------------------

toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "",
            " ",
            "auto",
            "kernel",
            "gateway",
            "debug",
            "10.0.0.0/8",
            "8.8.8.0/24",
            "fe80::/10",
            "192.0.2.1",
            "::1",
            "999.1.1.1",
            "/var/lib/nordwgd",
            "relative/path",
            "http://192.0.2.1/",
            "ftp://x",
            "de1001.nordvpn.com",
            "-bad-",
            "x" * 300,
            "nordlynx\n",
        ]
    )
)
toml_values = toml_scalars | st.lists(toml_scalars, max_size=4)

SECTION_KEYS = {section: list(keys) for section, keys in EXAMPLE.items() if isinstance(keys, dict)}
TOP_KEYS = [key for key, value in EXAMPLE.items() if not isinstance(value, dict)]


def check_config_error(error: object) -> None:
    if isinstance(error, errors.NordwgdError):
        assert isinstance(error, errors.ConfigError), type(error)
        # "<file>:<line>: <key>: <what is wrong>", or "<file>: ..." when there is no line.
        assert error.message.startswith(f"{CONFIG_PATH}:"), error.message
    else:
        assert isinstance(error, Config)


def test_example_config_is_valid() -> None:
    assert isinstance(parse_config(EXAMPLE_TEXT, CONFIG_PATH), Config)


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_as_config(tried: Counter, text: str) -> None:
    tried()
    check_config_error(only_typed(lambda: parse_config(text, CONFIG_PATH)))


@FEW
@given(lines=st.lists(st.sampled_from(EXAMPLE_TEXT.splitlines()), max_size=30))
def test_shuffled_example_lines(tried: Counter, lines: list[str]) -> None:
    """Lines of the real file in random order and number: duplicate keys, keys out of place."""
    tried()
    text = "\n".join(lines) + "\n"
    check_config_error(only_typed(lambda: parse_config(text, CONFIG_PATH)))


@st.composite
def mutated_example(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        section = draw(st.sampled_from(["", *SECTION_KEYS]))
        table = document if section == "" else document.setdefault(section, {})
        if not isinstance(table, dict):
            continue
        keys = TOP_KEYS if section == "" else SECTION_KEYS[section]
        action = draw(st.sampled_from(["retype", "retype", "delete", "unknown", "section"]))
        if action == "retype":
            table[draw(st.sampled_from(keys))] = draw(toml_values)
        elif action == "delete":
            table.pop(draw(st.sampled_from(keys)), None)
        elif action == "unknown":
            table[draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))] = draw(toml_values)
        elif section:
            document[section] = draw(toml_values)  # a section that is not a table
    return document


@FUZZ
@given(document=mutated_example())
def test_mutated_example_config(tried: Counter, document: dict[str, Any]) -> None:
    tried()
    text = to_toml(document)
    result = only_typed(lambda: parse_config(text, CONFIG_PATH))
    check_config_error(result)
    if isinstance(result, errors.ConfigError):
        # The message names where the problem is: a line, or at least a section or key.
        assert result.message != f"{CONFIG_PATH}:", result.message


@FEW
@given(data=st.binary(max_size=200) | st.sampled_from([b"\xff\xfe", b'[api]\nhost = "\xc3"']))
def test_random_bytes_config_file(tried: Counter, tmp_path: Path, data: bytes) -> None:
    tried()
    path = tmp_path / "nordwgd.toml"
    path.write_bytes(data)
    result = only_typed(lambda: load_config(path))
    if isinstance(result, errors.NordwgdError):
        assert isinstance(result, errors.ConfigError)
        assert result.message.startswith(f"{path}:")


def test_unreadable_config_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot read the config file"):
        load_config(tmp_path)  # a directory


def _limit_memory() -> None:
    # Should the loader read without bound again, fail fast instead of taking the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("kind", ["/dev/zero", "/dev/urandom", "huge", "fifo"])
def test_endless_or_huge_config_is_one_line(
    ledger: ScenarioRecorder, tmp_path: Path, kind: str
) -> None:
    if kind == "huge":
        path = tmp_path / "huge.toml"
        path.write_bytes(b"# " + b"x" * (8 << 20) + b"\n")
    elif kind == "fifo":
        path = tmp_path / "fifo.toml"
        os.mkfifo(path)  # no writer: an ordinary open would wait forever
    else:
        path = Path(kind)
    ledger.bad_inputs(1)
    # In a child with bounded memory and time: an unbounded read must not take the test run.
    result = subprocess.run(
        [sys.executable, "-m", "nordwgd", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_limit_memory,
    )
    assert result.returncode == 78, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"nordwgd: {path}: cannot read the config file: ")


def test_dev_null_config_is_the_defaults() -> None:
    assert load_config(Path("/dev/null")) == Config(source=Path("/dev/null"))


# --- API answers (beyond tests/test_parse_fuzz.py) -----------------------------------------------

PARSERS: dict[str, Callable[[bytes], object]] = {
    "recommendations.json": parse.parse_servers,
    "credentials-200.json": parse.parse_credentials,
    "ips-insights.json": parse.parse_insights,
    "countries.json": parse.parse_countries,
    "groups.json": parse.parse_groups,
    "technologies.json": parse.parse_technologies,
    "error-401-unauthorized.json": parse.parse_error,
}
BODIES = {name: fixture_bytes(name) for name in PARSERS}
SERVERS: list[Any] = json.loads(BODIES["recommendations.json"])

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "203.0.113.9", "::1", "online", "wireguard_udp", "public_key"])
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(name=st.sampled_from(sorted(PARSERS)), data=st.data())
def test_answers_cut_short(tried: Counter, name: str, data: st.DataObject) -> None:
    """A connection closed mid-answer: any prefix of a real body."""
    tried()
    body = BODIES[name].rstrip()  # without its closing bracket, not just its final newline
    end = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    result = only_typed(lambda: PARSERS[name](body[:end]))
    if name != "error-401-unauthorized.json":  # parse_error answers None for what it cannot read
        assert isinstance(result, errors.ApiUnavailable), (name, end)


def _mutate_in_place(node: Any, data: st.DataObject) -> None:
    parent: Any = None
    key: Any = None
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 4)) > 0:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    if parent is None:
        return
    action = data.draw(st.sampled_from(["replace", "delete", "null", "stringify", "nest"]))
    if action == "delete":
        del parent[key]
    elif action == "null":
        parent[key] = None
    elif action == "stringify":
        parent[key] = str(parent[key])
    elif action == "nest":
        parent[key] = [parent[key]]
    else:
        parent[key] = data.draw(json_values)


@FUZZ
@given(data=st.data())
def test_server_list_with_many_mutations(tried: Counter, data: st.DataObject) -> None:
    """Several servers damaged at several places at once: the rest parse, or a typed error."""
    tried()
    document = copy.deepcopy(SERVERS[:4])
    for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
        _mutate_in_place(document, data)
    result = only_typed(lambda: parse.parse_servers(json.dumps(document).encode(), "/v1/servers"))
    if isinstance(result, list):
        for server in result:
            assert server.hostname and server.station.version == 4


@FUZZ
@given(value=json_values)
def test_random_objects_as_one_server(tried: Counter, value: Any) -> None:
    tried()
    result = only_typed(lambda: parse.parse_server(value, "/v1/servers"))
    if isinstance(result, errors.NordwgdError):
        assert isinstance(result, errors.ApiUnavailable)


SERVER_2020: dict[str, Any] = json.loads(fixture_bytes("server-2020.json"))


def _droppable(server: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Paths in a server object of what a NordLynx tunnel does not need."""
    paths: list[tuple[Any, ...]] = [
        (key,)
        for key in server
        if key not in ("hostname", "station", "load", "status", "locations", "technologies")
    ]
    location = server["locations"][0]
    paths += [("locations", 0, key) for key in location if key != "country"]
    paths += [("locations", 0, "country", key) for key in ("id", "city")]
    for index, group in enumerate(server.get("groups", [])):
        paths += [("groups", index, key) for key in group]
    for index, entry in enumerate(server["technologies"]):
        if entry["identifier"] != "wireguard_udp":
            paths.append(("technologies", index))
        else:
            paths += [("technologies", index, key) for key in ("id", "name", "created_at")]
            paths += [("technologies", index, "pivot", key) for key in ("server_id",)]
    return paths


@FUZZ
@given(data=st.data())
def test_what_a_tunnel_does_not_need_may_be_missing(tried: Counter, data: st.DataObject) -> None:
    """Any set of fields the daemon does not need, deleted from a server of 2020: still usable."""
    tried()
    server = copy.deepcopy(SERVER_2020)
    paths = data.draw(st.lists(st.sampled_from(_droppable(server)), unique=True, max_size=12))
    # Deepest and last first, so that deleting one path never moves another.
    for path in sorted(
        paths, key=lambda p: (len(p), p[-1] if isinstance(p[-1], int) else -1), reverse=True
    ):
        parent = server
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
    (parsed,) = parse.parse_servers(json.dumps([server]).encode(), "/v1/servers")
    assert parsed.usable and parsed.hostname == "lv40.nordvpn.com"
    assert parsed.public_key == "Zid1YfpCDPeeyWzEEmiZLPcmwNopke/B/Pa/DtiViiw="


@FEW
@given(key=st.text(max_size=80), extra=st.dictionaries(st.text(max_size=10), json_values))
def test_credentials_never_quote_the_key(tried: Counter, key: str, extra: dict[str, Any]) -> None:
    tried()
    body = json.dumps({**extra, "nordlynx_private_key": key}).encode()
    result = only_typed(lambda: parse.parse_credentials(body))
    if isinstance(result, errors.NordwgdError) and len(key) >= 8 and key in result.message:
        # Only allowed when it is the message's own text (e.g. the key "nordlynx" in the field
        # name): a different key of the same length must produce it as well.
        stand_in = ("Y" if key == "X" * len(key) else "X") * len(key)
        other = parse_credentials_error({**extra, "nordlynx_private_key": stand_in})
        assert key in other, f"the key was quoted: {result.message!r}"


def parse_credentials_error(document: dict[str, Any]) -> str:
    try:
        parse.parse_credentials(json.dumps(document).encode())
    except errors.NordwgdError as error:
        return error.message
    return ""


# --- arguments between the bus and the Manager ---------------------------------------------------

variants = st.one_of(
    st.text(max_size=300).map(lambda s: Variant("s", s)),
    st.integers(min_value=-(2**31), max_value=2**31 - 1).map(lambda i: Variant("i", i)),
    st.booleans().map(lambda b: Variant("b", b)),
    st.lists(st.text(max_size=10), max_size=3).map(lambda items: Variant("as", items)),
    st.binary(max_size=10).map(lambda b: Variant("ay", b)),
    st.text(max_size=10).map(lambda s: Variant("v", Variant("s", s))),
)
option_keys = st.sampled_from(sorted(convert.CONNECT_KEYS)) | st.text(max_size=80)


@FUZZ
@given(options=st.dictionaries(option_keys, variants, max_size=8))
def test_string_options(tried: Counter, options: dict[str, Variant]) -> None:
    tried()
    result = only_typed(
        lambda: convert.string_options(options, convert.CONNECT_KEYS, "Connect options")
    )
    if isinstance(result, errors.NordwgdError):
        assert isinstance(result, errors.InvalidArgument)
        assert len(result.message) < 400  # a huge argument is never echoed whole
    else:
        assert isinstance(result, dict) and set(result) <= convert.CONNECT_KEYS
        for value in result.values():
            assert len(value) <= convert.MAX_STRING and "\0" not in value


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)


@FUZZ
@given(name=st.sampled_from(sorted(convert.PROPERTY_SIGNATURES)), value=plain_values)
def test_property_values_have_their_signature(tried: Counter, name: str, value: object) -> None:
    """Whatever the Manager reports, a property is either sent with its signature or refused
    with TypeError/ValueError, which the service logs instead of signalling."""
    tried()
    try:
        converted = convert.property_value(name, value)
    except (TypeError, ValueError):
        assert convert.PROPERTY_SIGNATURES[name] in ("a{sv}", "aa{sv}", "t", "q")
        return
    Variant(convert.PROPERTY_SIGNATURES[name], converted)  # raises if the value does not fit


@FUZZ
@given(value=plain_values)
def test_to_variant_always_builds_a_valid_variant(tried: Counter, value: object) -> None:
    tried()
    variant = convert.to_variant(value)
    Variant(variant.signature, variant.value)


@FUZZ
@given(
    options=st.dictionaries(
        st.sampled_from(["country", "city", "group", "server"]) | st.text(max_size=10),
        st.text(max_size=40) | st.integers() | st.none(),
        max_size=5,
    )
)
def test_check_options(tried: Counter, options: dict[str, object]) -> None:
    tried()
    result = only_typed(lambda: check_options(options, OPTION_KEYS))
    if isinstance(result, errors.NordwgdError):
        assert isinstance(result, errors.InvalidArgument)


@FUZZ
@given(text=st.text(max_size=300))
def test_server_host_names(tried: Counter, text: str) -> None:
    tried()
    result = only_typed(lambda: normalize_hostname(text))
    if isinstance(result, str):
        assert result.endswith(".") is False and all(ord(c) < 128 for c in result)
    else:
        assert isinstance(result, errors.InvalidArgument)


@FUZZ
@given(text=st.text(max_size=600))
@example(text="toke")
def test_token_validation_never_echoes(tried: Counter, text: str) -> None:
    tried()
    result = only_typed(lambda: validate_token(text))
    if isinstance(result, errors.NordwgdError):
        assert isinstance(result, errors.InvalidArgument)
        stripped = text.strip()
        # Text that the fixed messages contain anyway ("toke") proves nothing either way.
        if len(stripped) >= 4 and stripped not in _TOKEN_MESSAGES:
            assert stripped not in result.message


def _token_message(text: str) -> str:
    result = only_typed(lambda: validate_token(text))
    assert isinstance(result, errors.NordwgdError)
    return result.message


_TOKEN_MESSAGES = " ".join(_token_message(bad) for bad in ("", "!", "?" * 40, "a" * 600))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@FUZZ
@given(
    kind=st.sampled_from(["country", "city", "group"]),
    text=st.text(max_size=80) | st.sampled_from(["Germany", "de", "81", "Frankfurt", "P2P", " "]),
)
def test_location_names(tried: Counter, catalog: Catalog, kind: str, text: str) -> None:
    tried()
    resolvers: dict[str, Callable[[str], object]] = {
        "country": catalog.resolve_country,
        "city": catalog.resolve_city,
        "group": catalog.resolve_group,
    }
    result = only_typed(lambda: resolvers[kind](text))
    if isinstance(result, errors.NordwgdError):
        assert isinstance(result, errors.InvalidArgument)  # UnknownLocation is one
