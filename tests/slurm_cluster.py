"""A throwaway single-node Slurm cluster on localhost for the tests.

:func:`install` gets Debian's ``slurm-wlm`` and ``munge`` with apt-get when ``slurmctld`` is
missing; :func:`start` writes a minimal ``slurm.conf`` for this machine (its real CPUs and memory
from ``slurmd -C``, ``select/cons_tres``, ``proctrack/linuxproc``: no cgroups or systemd needed)
and starts ``munged``, ``slurmctld`` and ``slurmd`` as daemons with their state, spool, logs, pid
files and munge socket in a temporary directory; :meth:`Cluster.stop` cancels the cluster's jobs,
stops the three daemons by their pid files and removes what ``start`` wrote. Needs root.

The configuration goes to ``/etc/slurm/slurm.conf``, Slurm's compiled-in path, not to a file
named by ``SLURM_CONF``: the Slurm executor plugin's job step drops ``SLURM_*`` variables
before its inner ``srun``, which would then find no configuration. An existing file there that
this module did not write is never touched (:class:`SlurmUnavailable` instead), and a lock
keeps two test sessions on one machine from starting clusters at the same time.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by skrd4ad tests/slurm_cluster.py; removed when its cluster stops"
LOCK = Path(tempfile.gettempdir()) / "skrd4ad-slurm-cluster.lock"
PACKAGES = ("slurm-wlm", "munge")
PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")  # start order; stopped in reverse


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed or configured on this machine (the reason is the message)."""


def _run(cmd: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def install() -> None:
    """Install slurm-wlm and munge with apt-get unless ``slurmctld`` is already there."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmctld is missing and installing slurm-wlm/munge needs root")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("slurmctld is missing and there is no apt-get to install slurm-wlm/munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_lock = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get may be running
    for cmd in (["apt-get", *wait_lock, "update", "-q"],
                ["apt-get", *wait_lock, "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        proc = _run(cmd, timeout=900, env=env)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def node_line() -> str:
    """This machine as Slurm sees it: ``NodeName=<host> CPUs=.. ... RealMemory=..`` (``slurmd -C``)."""
    proc = _run(["slurmd", "-C"])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("NodeName=")]
    if proc.returncode != 0 or not lines:
        raise SlurmUnavailable(f"slurmd -C failed: {proc.stdout}{proc.stderr}")
    return lines[0].strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(root: Path, node: str) -> str:
    """A minimal one-node configuration: everything on 127.0.0.1, all files under ``root``."""
    host = node.split()[0].removeprefix("NodeName=")
    return "\n".join([
        MARKER,
        "ClusterName=skrd4adtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge/munge.socket",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "ReturnToService=2",
        # finished jobs stay visible to squeue for 10 minutes: the executor's status command
        "MinJobAge=600",
        f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    """A running cluster: its directory, node line and the pid files of its daemons."""

    root: Path
    node: str
    lock: IO[str]
    wrote_conf: bool = False
    pid_files: dict[str, Path] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        """The end of each daemon log, for failure messages."""
        out = []
        for name in ("munge/munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until ``sinfo`` reports the node idle."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = _run(["sinfo", "--noheader", "--Node", "--format=%t"], timeout=30)
            state = (proc.stdout + proc.stderr).strip()
            if proc.returncode == 0 and state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"node not idle after {timeout:.0f} s (sinfo: {state!r})\n{self.log_tail()}")

    def jobs(self) -> list[tuple[str, str, str]]:
        """(job id, state, comment) of every job slurmctld still knows, finished ones included."""
        proc = _run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%k"], timeout=30)
        assert proc.returncode == 0, proc.stderr
        return [tuple(line.split("|", 2)) for line in proc.stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        """Cancel the cluster's jobs, stop its daemons and remove its files (safe to call twice)."""
        try:
            if self.pid_files.get("slurmctld"):
                ids = [job_id for job_id, state, _ in self.jobs() if state in ("PENDING", "RUNNING")]
                if ids:
                    _run(["scancel", *ids], timeout=30)
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and any(
                            s in ("RUNNING", "COMPLETING") for _, s, _ in self.jobs()):
                        time.sleep(0.5)
        except (AssertionError, OSError, subprocess.SubprocessError):
            pass  # the controller is gone or broken: stopping the daemons is what matters
        finally:
            for name in reversed(DAEMONS):
                if name in self.pid_files:
                    stop_pid_file(self.pid_files.pop(name))
            if self.wrote_conf and SLURM_CONF.exists() and SLURM_CONF.read_text().startswith(MARKER):
                SLURM_CONF.unlink()
            self.wrote_conf = False
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.lock.closed:
                fcntl.flock(self.lock, fcntl.LOCK_UN)
                self.lock.close()


def stop_pid_file(pid_file: Path, timeout: float = 15) -> None:
    """SIGTERM the process named in ``pid_file``, SIGKILL it if it outlives ``timeout``."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return
            time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _wait_for(path: Path, what: str, cluster: Cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start ({path} missing after {timeout:.0f} s)\n{cluster.log_tail()}")
        time.sleep(0.1)


def start() -> Cluster:
    """Install if needed and start a one-node cluster; the caller must call ``stop()``."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting slurmctld/slurmd/munged as configured here needs root")
    install()
    node = node_line()
    lock = LOCK.open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # another session's cluster: wait until it stops
    if SLURM_CONF.exists() and not SLURM_CONF.read_text().startswith(MARKER):
        lock.close()
        raise SlurmUnavailable(f"{SLURM_CONF} exists and was not written by these tests; not touching it")
    # munged insists that every directory above its socket is world-executable (mkdtemp gives 0700)
    root = Path(tempfile.mkdtemp(prefix="skrd4ad-slurm-"))
    cluster = Cluster(root=root, node=node, lock=lock)
    try:
        for sub in ("munge", "state", "spool"):
            (root / sub).mkdir()
        for path in (root, root / "munge"):
            path.chmod(0o755)
        key = root / "munge/munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge = root / "munge"
        cluster.pid_files["munged"] = munge / "munged.pid"
        proc = _run(["munged", f"--key-file={key}", f"--socket={munge}/munge.socket",
                     f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                     f"--seed-file={munge}/munged.seed"])
        if proc.returncode != 0:
            raise RuntimeError(f"munged failed: {proc.stderr}\n{cluster.log_tail()}")
        _wait_for(munge / "munged.pid", "munged", cluster)

        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(slurm_conf(root, cluster.node))
        cluster.wrote_conf = True
        for daemon in ("slurmctld", "slurmd"):
            cluster.pid_files[daemon] = root / f"{daemon}.pid"
            proc = _run([daemon])  # forks into the background once configured
            if proc.returncode != 0:
                raise RuntimeError(f"{daemon} failed: {proc.stderr}\n{cluster.log_tail()}")
            _wait_for(root / f"{daemon}.pid", daemon, cluster)
        cluster.wait_idle()
    except BaseException:
        cluster.stop()
        raise
    return cluster
