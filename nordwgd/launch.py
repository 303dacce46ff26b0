"""The installed commands: check the libraries nordwgd runs on, then start the command.

An older library found first on the path (a distribution's anyio next to a virtualenv, say)
would otherwise fail deep inside a connect with an AttributeError. Each entry point checks the
libraries it uses before importing anything that needs them, and stops with one line naming
the library, the version found and the version needed.

Only the standard library may be imported at module level here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import import_module, metadata


@dataclass(frozen=True)
class Requirement:
    distribution: str  # the name pyproject.toml declares
    minimum: tuple[int, ...]
    below: tuple[int, ...]  # the next major version, which is not known to work
    module: str  # what the code imports
    feature: str = ""  # "attr.path" below the module that the code needs, checked too


# The same versions as pyproject.toml's dependencies (tests/test_launch.py keeps them equal).
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("dbus-fast", (4, 0), (6,), "dbus_fast", "annotations.DBusSignature"),
    Requirement("httpx", (0, 27), (1,), "httpx"),
    Requirement("httpcore", (1, 0), (2,), "httpcore", "AsyncNetworkStream"),
    Requirement("anyio", (4, 10), (5,), "anyio", "abc.SocketStream.from_socket"),
    Requirement("pyroute2", (0, 7, 2), (0, 10), "pyroute2"),
    Requirement("jinja2", (3, 1), (4,), "jinja2"),
    Requirement(
        "cryptography", (38,), (51,), "cryptography", "hazmat.primitives.asymmetric.x25519"
    ),
)

# The libraries each command imports; the kill switch needs only the firewall's.
DAEMON = ("dbus-fast", "httpx", "httpcore", "anyio", "pyroute2", "jinja2", "cryptography")
CLI = ("dbus-fast",)
TRAY = ("dbus-fast",)
KILLSWITCH = ("jinja2",)

EX_SOFTWARE = 70  # sysexits.h: an internal error (here: the installation is broken)


def parse_version(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string ("4.10.0rc1" -> (4, 10, 0))."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def _show(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def problems(
    wanted: Iterable[str],
    installed: Callable[[str], str | None],
    has_feature: Callable[[Requirement], bool],
) -> list[str]:
    """What is wrong with the libraries named in ``wanted``, one sentence each."""
    found: list[str] = []
    by_name: Mapping[str, Requirement] = {r.distribution: r for r in REQUIREMENTS}
    for name in wanted:
        requirement = by_name[name]
        needed = f"{_show(requirement.minimum)} or later, before {_show(requirement.below)}"
        version = installed(name)
        if version is None:
            found.append(f"{name} is not installed (nordwgd needs {needed})")
            continue
        parsed = parse_version(version)
        if not requirement.minimum <= parsed < requirement.below:
            found.append(f"{name} {version} is installed, nordwgd needs {needed}")
        elif not has_feature(requirement):
            found.append(
                f"{name} {version} lacks {requirement.module}.{requirement.feature}"
                f" (nordwgd needs {needed})"
            )
    return found


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _has_feature(requirement: Requirement) -> bool:
    """Whether the module that is really imported has the feature (not just the metadata)."""
    try:
        target: object = import_module(requirement.module)
        for part in requirement.feature.split(".") if requirement.feature else ():
            if not hasattr(target, part):
                target = import_module(f"{getattr(target, '__name__', '')}.{part}")
            else:
                target = getattr(target, part)
    except (ImportError, AttributeError):
        return False
    return True


def check(prog: str, wanted: Iterable[str]) -> None:
    """Exit with one clear message per problem when a library is missing or unfit."""
    found = problems(wanted, _installed, _has_feature)
    if not found:
        return
    for problem in found:
        print(f"{prog}: {problem}", file=sys.stderr)
    print(f"{prog}: the installation is broken; reinstall nordwgd", file=sys.stderr)
    raise SystemExit(EX_SOFTWARE)


def _run(prog: str, wanted: Iterable[str], module: str) -> int:
    check(prog, wanted)
    main: Callable[[], int] = import_module(module).main
    return main()


def daemon() -> int:
    return _run("nordwgd", DAEMON, "nordwgd.daemon")


def cli() -> int:
    return _run("nordwgctl", CLI, "nordwgd.cli")


def killswitch() -> int:
    return _run("nordwgd-killswitch", KILLSWITCH, "nordwgd.killswitch")


def tray() -> int:
    return _run("nordwgd-tray", TRAY, "nordwgd_tray.__main__")


def main() -> int:
    """``python -m nordwgd.launch``: check every library (scripts/setup runs this)."""
    check("nordwgd", (r.distribution for r in REQUIREMENTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
