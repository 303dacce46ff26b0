"""packaging/arch/PKGBUILD, built with makepkg (Debian 12's pacman-package-manager) as on Arch.

This machine is not Arch: makepkg runs with --nodeps (the Arch dependencies are not pacman
packages here) and builds with Debian's python3 and this checkout's libraries, so the layout
below /usr/lib/python3* follows Debian's python3. What is checked is everything else a user gets:
the commands, units, bus and polkit files, the config as a backup file, man pages, the tray as
its own package, and that the test world is not in any package.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SITE_PACKAGES = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
BUILDER = "nobody"  # makepkg refuses to run as root

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def packages() -> Iterator[dict[str, Path]]:
    if shutil.which("makepkg") is None:
        pytest.fail("makepkg is not installed (apt-get install makepkg pacman-package-manager)")
    base = Path(tempfile.mkdtemp(prefix="nordwgd-makepkg-"))
    try:
        tools = base / "bin"
        tools.mkdir()
        # Arch calls its interpreter "python": here Debian's python3, installing as Debian's
        # own packages do (/usr/bin, /usr/lib/python3/dist-packages), with the checkout's
        # libraries on its path for the man pages, which import the argument parsers.
        (tools / "python").symlink_to("/usr/bin/python3")
        for name in ("build", "pkg", "src", "home"):
            (base / name).mkdir()
        shutil.chown(base, BUILDER)
        for path in base.iterdir():
            shutil.chown(path, BUILDER)
        env = {
            "PATH": f"{tools}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(base / "home"),
            "BUILDDIR": str(base / "build"),
            "PKGDEST": str(base / "pkg"),
            "SRCDEST": str(base / "src"),
            "PKGEXT": ".pkg.tar.zst",
            "LANG": "C.UTF-8",
            "DEB_PYTHON_INSTALL_LAYOUT": "deb",
            "PYTHONPATH": str(SITE_PACKAGES),
        }
        result = subprocess.run(
            ["setpriv", "--reuid", BUILDER, "--regid", "nogroup", "--clear-groups",
             "makepkg", "--nodeps", "--noconfirm", "--cleanbuild", "--force"],
            cwd=REPO / "packaging" / "arch", env=env, capture_output=True, text=True,
            timeout=600, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        built = {p.name.split("-0.1.0")[0]: p for p in (base / "pkg").glob("*.pkg.tar.zst")}
        yield built
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _listing(package: Path) -> list[str]:
    out = subprocess.run(
        ["tar", "--zstd", "-tf", str(package)], capture_output=True, text=True, check=True
    ).stdout
    return [line.rstrip("/") for line in out.splitlines()]


def _info(package: Path) -> str:
    return subprocess.run(
        ["tar", "--zstd", "-xOf", str(package), ".PKGINFO"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_two_packages(packages: dict[str, Path]) -> None:
    assert sorted(packages) == ["gnome-shell-extension-nordwgd", "nordwgd", "nordwgd-tray"]


def test_the_gnome_shell_extension_package(packages: dict[str, Path]) -> None:
    files = set(_listing(packages["gnome-shell-extension-nordwgd"]))
    where = "usr/share/gnome-shell/extensions/nordwgd@nordwgd.org"
    assert {f"{where}/metadata.json", f"{where}/extension.js"} <= files
    assert "depend = gnome-shell>=45" in _info(packages["gnome-shell-extension-nordwgd"])


def test_the_daemon_package_has_what_a_user_needs(packages: dict[str, Path]) -> None:
    files = set(_listing(packages["nordwgd"]))
    for path in (
        "usr/bin/nordwgd",
        "usr/bin/nordwgctl",
        "usr/bin/nordwgd-killswitch",
        "usr/lib/systemd/system/nordwgd.service",
        "usr/lib/systemd/system/nordwgd-killswitch.service",
        "usr/lib/systemd/system/nordwgd-health.timer",
        "usr/lib/systemd/system/nordwgd-renew.timer",
        "usr/share/dbus-1/system.d/org.nordwgd.Nordwgd1.conf",
        "usr/share/dbus-1/system-services/org.nordwgd.Nordwgd1.service",
        "usr/share/polkit-1/actions/org.nordwgd.nordwgd1.policy",
        "etc/nordwgd/nordwgd.toml",
        "usr/share/man/man8/nordwgd.8.gz",
        "usr/share/man/man1/nordwgctl.1.gz",
        "usr/share/man/man5/nordwgd.toml.5.gz",
    ):
        assert path in files, path
    assert any(p.endswith("/nordwgd/launch.py") for p in files)
    assert not any("/nordwgd/testing" in p for p in files), "the test world is not packaged"
    assert not any("nordwgd_tray" in p or p.endswith("nordwgd-tray") for p in files)
    info = _info(packages["nordwgd"])
    assert "backup = etc/nordwgd/nordwgd.toml" in info
    for dependency in ("python-dbus-fast", "python-httpx", "python-anyio", "nftables"):
        assert f"depend = {dependency}" in info


def test_the_commands_start_the_checked_entry_points(packages: dict[str, Path]) -> None:
    script = subprocess.run(
        ["tar", "--zstd", "-xOf", str(packages["nordwgd"]), "usr/bin/nordwgd"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "from nordwgd.launch import daemon" in script


def test_the_tray_package(packages: dict[str, Path]) -> None:
    files = set(_listing(packages["nordwgd-tray"]))
    for path in (
        "usr/bin/nordwgd-tray",
        "etc/xdg/autostart/nordwgd-tray.desktop",
        "usr/share/applications/nordwgd-tray.desktop",
        "usr/share/icons/hicolor/scalable/status/nordwgd-connected.svg",
        "usr/share/man/man1/nordwgd-tray.1.gz",
    ):
        assert path in files, path
    assert any(p.endswith("/nordwgd_tray/__main__.py") for p in files)
    assert "depend = nordwgd" in _info(packages["nordwgd-tray"])


def test_makepkg_leaves_the_checkout_alone() -> None:
    # Its build, source and package directories are elsewhere; nothing is written beside it.
    assert sorted(p.name for p in (REPO / "packaging" / "arch").iterdir()) == ["PKGBUILD"]
