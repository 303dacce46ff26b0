"""A throw-away container running real systemd as PID 1, for system tests.

The container's root is an overlay of the host's ``/`` with its writable layer on a tmpfs, made
inside a private mount namespace (``unshare --mount``): nothing is written to the host's disk
and the mounts vanish with the container. nordwgd is installed into the overlay with
``packaging/install.sh --root`` before boot. ``--private-network`` gives the container its own
network namespace, so the daemon's firewall, routes and DNS never touch the host's.

    with boot_container() as box:
        box.run(["systemctl", "start", "nordwgd"])

Commands run inside through ``nsenter`` on the container's PID 1 (no machined or host systemd
is needed). Teardown powers the container off, and falls back to killing the container's PID 1
and then nspawn, both processes started here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nordwgd.testing import cgroups

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "packaging" / "install.sh"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Host services that have no business in a test container (slow, noisy or need hardware).
DEFAULT_MASKS: tuple[str, ...] = (
    "postgresql.service",
    "postgresql@.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "man-db.timer",
    "fstrim.timer",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "getty@tty1.service",
    "console-getty.service",
    "ssh.service",
    "cron.service",
)


class ContainerError(RuntimeError):
    """The container could not be prepared, booted, reached or stopped."""


@dataclass
class Container:
    """A booted container; ``run`` executes commands inside it."""

    name: str
    nspawn: subprocess.Popen[bytes]
    leader: int  # host PID of the container's PID 1 (systemd)
    console: Path  # the container's console output, for diagnosing failures
    _closed: bool = field(default=False, repr=False)
    _spawned: list[subprocess.Popen[str]] = field(default_factory=list, repr=False)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container as root (all of its namespaces)."""
        environment = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "cat"}
        if env:
            environment.update(env)
        command = [
            "nsenter",
            "--target",
            str(self.leader),
            "--all",
            "--",
            "env",
            "-i",
            *(f"{key}={value}" for key, value in environment.items()),
            *argv,
        ]
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ContainerError(
                f"in container {self.name}: {shlex.join(argv)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start a long-running command inside, with text pipes on stdin and stdout.

        The container's teardown stops it (everything inside dies with the container's PID 1).
        """
        environment = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8"}
        command = [
            "nsenter", "--target", str(self.leader), "--all", "--",
            "env", "-i", *(f"{key}={value}" for key, value in environment.items()), *argv,
        ]  # fmt: skip
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._spawned.append(process)
        return process

    def run_as(
        self,
        user: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container as ``user``, outside any login session."""
        # The user's primary group is looked up inside: "nobody" belongs to "nogroup".
        switch = 'u=$1; shift; exec setpriv --reuid="$u" --regid="$(id -g "$u")" --init-groups "$@"'
        return self.run(["sh", "-c", switch, "sh", user, *argv], check=check, timeout=timeout)

    def wait_running(self, timeout: float = 60.0) -> str:
        """Wait until boot finished; returns ``running`` or ``degraded``."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = self.run(["systemctl", "is-system-running"], check=False, timeout=timeout)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        raise ContainerError(f"container {self.name} did not finish booting (state {state!r})")

    def failed_units(self) -> list[str]:
        result = self.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"])
        return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]

    def unit_property(self, unit: str, name: str) -> str:
        result = self.run(["systemctl", "show", "--value", f"--property={name}", unit])
        return result.stdout.strip()

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        argv = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        if unit:
            argv += ["-u", unit]
        return self.run(argv, check=False).stdout

    def console_output(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.nspawn.poll() is not None:
            raise ContainerError(
                f"container {self.name} exited ({self.nspawn.returncode}):\n"
                f"{self.console_output()[-4000:]}"
            )

    def close(self, timeout: float = 20.0) -> None:
        """Power off; kill the container's PID 1 and then nspawn if that does not work."""
        if self._closed:
            return
        self._closed = True
        if self.nspawn.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.run(["systemctl", "--no-block", "poweroff"], check=False, timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(timeout=timeout)
        if self.nspawn.poll() is None:
            # Killing PID 1 of a PID namespace kills everything in it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.nspawn.wait(timeout=10)
        if self.nspawn.poll() is None:
            self.nspawn.kill()
            self.nspawn.wait(timeout=10)
        for process in self._spawned:
            # nsenter itself; what it started died with the container.
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        with contextlib.suppress(OSError):
            self.console.unlink()


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the direct children of ``pid``."""
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Format: pid (comm) state ppid ...; comm may contain spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append((int(entry.name), comm))
    return found


def _find_leader(nspawn: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            break
        for pid, comm in _children(nspawn.pid):
            if comm == "systemd":
                return pid
        time.sleep(0.05)
    raise ContainerError("the container's systemd did not appear")


# Only compared with, never written to.
_PRIVATE_TMP_DIRS = (Path("/tmp"), Path("/var/tmp"))  # noqa: S108


def _stage_worktree_dropins(staging: Path) -> None:
    """Let hardened units see a working tree that lies under a temporary directory.

    Units with PrivateTmp= get a fresh /tmp, which hides a checkout (and its .venv) there;
    binding it read-only on top keeps the rest of the hardening as it ships.
    """
    if not any(REPO_ROOT.is_relative_to(directory) for directory in _PRIVATE_TMP_DIRS):
        return
    for unit in sorted((REPO_ROOT / "units").glob("*.service")):
        dropin = staging / "etc/systemd/system" / f"{unit.name}.d" / "50-worktree.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(f"[Service]\nBindReadOnlyPaths={REPO_ROOT}\n")


def _prepare_script(
    base: Path,
    staging: Path,
    install: bool,
    python: str | None,
    masks: Sequence[str],
    enable: Sequence[str],
    nspawn_argv: Sequence[str],
    lower: Path = Path("/"),
) -> str:
    root = base / "root"
    q = shlex.quote
    lines = [
        "set -eu",
        f"mount -t tmpfs -o mode=0755 nordwgd-nspawn {q(str(base))}",
        f"mkdir {q(str(base / 'upper'))} {q(str(base / 'work'))} {q(str(root))}",
        "mount -t overlay overlay -o "
        + q(f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}")
        + f" {q(str(root))}",
    ]
    if install:
        # Without an interpreter, install.sh builds its own virtualenv (a packaged install).
        choice = f" --python {q(python)}" if python else ""
        lines.append(f"{q(str(INSTALL_SCRIPT))} --root {q(str(root))}{choice} >/dev/null")
    for unit in masks:
        lines.append(f"ln -sfn /dev/null {q(str(root / 'etc/systemd/system' / unit))}")
    lines.append(f"cp -a {q(str(staging))}/. {q(str(root))}/")
    if enable:
        lines.append(
            f"systemctl --root={q(str(root))} enable {' '.join(map(q, enable))} >/dev/null 2>&1"
        )
    lines.append("exec " + shlex.join(nspawn_argv))
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def boot_container(
    *,
    install: bool = True,
    python: str | None = sys.executable,
    files: Mapping[str, bytes | str] | None = None,
    masks: Sequence[str] = DEFAULT_MASKS,
    enable: Sequence[str] = (),
    boot_timeout: float = 60.0,
    lower: Path = Path("/"),
    binds: Sequence[str] = (),
) -> Iterator[Container]:
    """Boot a container, yield it once systemd is up, always tear it down.

    ``lower`` is the read-only root under the overlay: this machine's ``/`` by default, or a
    prepared Debian root (the package tests use one with nothing of nordwgd in it, with
    ``install=False``). ``binds`` are extra read-only binds, "HOST[:CONTAINER]".

    ``files`` maps absolute paths inside the container to contents written before boot (for
    example a config, a drop-in or a test unit). ``enable`` names units enabled before boot.
    ``python`` is the interpreter the installed commands run (default: this one, so the working
    tree is tested); None builds the private virtualenv as a package install would.
    """
    if os.geteuid() != 0:
        raise ContainerError("booting a container needs root")
    for tool in ("unshare", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            raise ContainerError(f"{tool} is not installed")
    name = f"nordwgd-{secrets.token_hex(4)}"
    base = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-files-"))
    # cp -a copies the staging directory's own mode onto the container's "/".
    staging.chmod(0o755)
    console_fd, console_name = tempfile.mkstemp(prefix=f"{name}-console-")
    console = Path(console_name)
    container: Container | None = None
    nspawn: subprocess.Popen[bytes] | None = None
    cgroup_dirs: list[Path] = []
    try:
        if python is not None:
            _stage_worktree_dropins(staging)
        for path, content in (files or {}).items():
            target = staging / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            target.write_bytes(data)
            if path.startswith(("/usr/local/bin/", "/usr/bin/", "/usr/local/sbin/")):
                target.chmod(0o755)
        nspawn_argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={base / 'root'}",
            f"--machine={name}",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--bind=/dev/net/tun",
            # The working tree (and its .venv) at the same path: the overlay alone hides it when
            # it lies under /tmp, where nspawn mounts a fresh tmpfs.
            f"--bind-ro={REPO_ROOT}",
            *(f"--bind-ro={bind}" for bind in binds),
            "--console=read-only",
            "systemd.unit=multi-user.target",
        ]
        script = _prepare_script(base, staging, install, python, masks, enable, nspawn_argv, lower)
        cgroup_dirs = cgroups.make_private(name)
        # The shell joins them first: nspawn, exec'd by it, makes the container's cgroups there.
        script = (
            "".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}\n" for d in cgroup_dirs)
            + script
        )
        nspawn = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=console_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        os.close(console_fd)
        console_fd = -1
        leader = _find_leader(nspawn, boot_timeout)
        container = Container(name=name, nspawn=nspawn, leader=leader, console=console)
        container.wait_running(boot_timeout)
        yield container
    except ContainerError as error:
        log = console.read_text(errors="replace") if console.exists() else ""
        raise ContainerError(f"{error}\n--- console ---\n{log[-4000:]}") from None
    finally:
        if console_fd >= 0:
            os.close(console_fd)
        if container is not None:
            container.close()
        elif nspawn is not None and nspawn.poll() is None:
            nspawn.kill()
            nspawn.wait(timeout=10)
        with contextlib.suppress(OSError):
            console.unlink()
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            base.rmdir()
        cgroups.remove(cgroup_dirs)
