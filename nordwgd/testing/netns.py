"""Network namespace plumbing for the test world: unique names, namespaces, veths, commands.

Every name made here carries ``RUN_ID``, a random suffix fixed for this process, so several
test runs on one machine never collide and ``cleanup_run`` removes only what this run made.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

RUN_ID = secrets.token_hex(3)
NETNS_PREFIX = "nwgt"
IFNAME_MAX = 15
_REPO_ROOT = Path(__file__).resolve().parents[2]


def unique_name(prefix: str, *, limit: int = IFNAME_MAX) -> str:
    """``prefix`` + this run's id + a short random part; at most ``limit`` characters."""
    name = f"{prefix}{RUN_ID}{secrets.token_hex(2)}"
    if len(name) > limit:
        raise ValueError(f"name {name!r} is longer than {limit} characters")
    return name


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=None if env is None else dict(env),
        )
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"{' '.join(argv)} failed with status {error.returncode}: {error.stderr.strip()}"
        ) from None


def create_netns(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def kill_processes_in(name: str) -> None:
    """SIGKILL every process still inside namespace ``name`` (one this run created)."""
    out = run(["ip", "netns", "pids", name], check=False).stdout
    for pid in (int(word) for word in out.split() if word.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_netns(name: str) -> None:
    run(["ip", "netns", "delete", name], check=False)
    with contextlib.suppress(FileNotFoundError, OSError):
        for leftover in (Path("/etc/netns") / name).iterdir():
            leftover.unlink()
        (Path("/etc/netns") / name).rmdir()


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def veth(name_a: str, netns_a: str, name_b: str, netns_b: str) -> None:
    """A veth pair with one end in each namespace, both ends up."""
    run(
        [
            "ip",
            "-n",
            netns_a,
            "link",
            "add",
            "name",
            name_a,
            "type",
            "veth",
            "peer",
            "name",
            name_b,
            "netns",
            netns_b,
        ]
    )
    run(["ip", "-n", netns_a, "link", "set", name_a, "up"])
    run(["ip", "-n", netns_b, "link", "set", name_b, "up"])


def ip(netns: str, *args: str) -> None:
    run(["ip", "-n", netns, *args])


def sysctl(netns: str, key: str, value: str) -> None:
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"])


def nft(netns: str, ruleset: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset, check=check)


def user_argv(user: str | None) -> list[str]:
    """A setpriv prefix that drops to ``user`` (name or uid), or nothing for root."""
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]


def exec_argv(netns: str, argv: Sequence[str], *, user: str | None = None) -> list[str]:
    return ["ip", "netns", "exec", netns, *user_argv(user), *argv]


def ns_exec(
    netns: str,
    argv: Sequence[str],
    *,
    user: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return run(exec_argv(netns, argv, user=user), check=check, timeout=timeout, input=input)


def python_env() -> dict[str, str]:
    """Environment for Python children: this checkout importable, nothing secret passed."""
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "HOME")}
    env["PYTHONPATH"] = str(_REPO_ROOT)
    return env


def python_argv(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def run_python(
    netns: str,
    code: str,
    *args: str,
    input: str | None = None,
    timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with this interpreter inside ``netns``; secrets go through ``input``."""
    argv = exec_argv(netns, python_argv(code, *args))
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=python_env(),
        cwd=_REPO_ROOT,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"python in {netns} failed with status {result.returncode}:\n{result.stderr}"
        )
    return result


def popen_python_module(
    netns: str,
    module: str,
    *args: str,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m module args`` in ``netns`` (the caller stops it)."""
    return subprocess.Popen(
        exec_argv(netns, [sys.executable, "-m", module, *args]),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=python_env(),
        cwd=_REPO_ROOT,
    )


def cleanup_run(run_id: str = RUN_ID) -> None:
    """Remove namespaces (and the processes left in them) and wireguard-go sockets whose
    names carry ``run_id``: deleting a namespace alone would leave its processes running."""
    for name in list_netns():
        if name.startswith(NETNS_PREFIX) and run_id in name:
            kill_processes_in(name)
            delete_netns(name)
    with contextlib.suppress(FileNotFoundError):
        for sock in Path("/var/run/wireguard").glob(f"*{run_id}*.sock"):
            sock.unlink()
