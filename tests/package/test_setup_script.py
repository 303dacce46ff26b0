"""scripts/setup on a Debian 12 machine whose python3-anyio and python3-httpx came from apt.

Debian's too-old copies are put in front of the real /usr/lib/python3/dist-packages with an
overlay mount in a private mount namespace (the machine itself is not changed); scripts/setup
then runs in a copy of the checkout, and the venv it makes must shadow them with versions that
work.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DIST = "/usr/lib/python3/dist-packages"
# What a desktop with python3-httpx from apt has (httpx pulls in httpcore, anyio, sniffio, h11).
DEBIAN_PACKAGES = (
    "python3-anyio",
    "python3-httpx",
    "python3-httpcore",
    "python3-sniffio",
    "python3-h11",
    "python3-dbus-fast",
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nordwgd-setup-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _debian_libraries(workdir: Path) -> Path:
    debs = workdir / "debs"
    debs.mkdir()
    subprocess.run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *DEBIAN_PACKAGES],
        cwd=debs,
        check=True,
        capture_output=True,
        timeout=300,
    )
    extracted = workdir / "extracted"
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
    return extracted / DIST.lstrip("/")


def _checkout_copy(workdir: Path) -> Path:
    copy = workdir / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
        elif source.is_symlink():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).symlink_to(source.readlink())
    # The systemd-resolved package setup downloads for the container tests, if there is one.
    if (REPO / ".cache/debs").is_dir():
        shutil.copytree(REPO / ".cache/debs", copy / ".cache/debs")
    return copy


def test_setup_shadows_debians_old_anyio_and_httpx(workdir: Path) -> None:
    debian_dist = _debian_libraries(workdir)
    assert (debian_dist / "anyio").is_dir()
    copy = _checkout_copy(workdir)
    upper, work = workdir / "upper", workdir / "work"
    upper.mkdir()
    work.mkdir()
    q = shlex.quote
    script = "\n".join(
        [
            "set -e",
            f"mount -t overlay overlay -o lowerdir={q(str(debian_dist))}:{DIST},"
            f"upperdir={q(str(upper))},workdir={q(str(work))} {DIST}",
            # The situation of the report: the system's python sees Debian's anyio 3.6.
            "/usr/bin/python3 -c 'import anyio, sys; print(\"system anyio\", anyio.__file__)'",
            f"cd {q(str(copy))}",
            "scripts/setup",
            ".venv/bin/python -c 'import anyio, httpx; print(\"venv anyio\", anyio.__file__)'",
            ".venv/bin/python -c 'import anyio.abc; anyio.abc.SocketStream.from_socket'",
            ".venv/bin/python -m nordwgd.launch",
        ]
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"system anyio {DIST}/anyio/__init__.py" in output
    venv_line = next(line for line in output.splitlines() if line.startswith("venv anyio"))
    assert str(copy / ".venv") in venv_line, venv_line
