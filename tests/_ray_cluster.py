"""A Ray cluster of separate `ray start` processes on 127.0.0.1 (a head and worker nodes, one CPU each), for
the multi-node tests: every port chosen free, a private temp folder (so it registers nothing in /tmp/ray),
token authentication with a private token, usage stats off. `stop()` kills exactly the processes it started
(their process groups, then anything left that runs out of its temp folder), never `ray stop`, which would
stop every Ray instance on the machine."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# `ray start`, except that its node listens on 127.0.0.1. Ray resolves 127.0.0.1 to the machine's outward
# address (the one a UDP socket to 8.8.8.8 would use) in every process, unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which then refuses to start worker nodes. So every process of the
# cluster (and the driver) runs with that variable at 0, and `ray start` itself is told the node's address
# and let past the check. Nothing of this cluster uses an address other than 127.0.0.1.
RAY_START = ("import sys\n"
             "import ray._private.ray_constants as constants, ray._private.services as services\n"
             "constants.ENABLE_RAY_CLUSTER = True\n"
             "services.get_node_ip_address = lambda address=None: '127.0.0.1'\n"
             "from ray.scripts.scripts import main\n"
             "sys.argv[0] = 'ray'\n"
             "sys.exit(main())\n")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free on 127.0.0.1 now (bound together, so no two are the same)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    node_manager_port: int

    def raylet(self) -> psutil.Process | None:
        """This node's raylet process (found by its node manager port), or None once it is gone."""
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                cmdline = proc.info["cmdline"] or []
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if cmdline and cmdline[0].endswith("raylet") and \
                    f"--node_manager_port={self.node_manager_port}" in cmdline:
                return proc
        return None


@dataclass
class LocalCluster:
    """`LocalCluster(workers=2).start()`; `.address` for `--ray`; `.env` for every process that joins it."""

    workers: int = 2
    cpus_per_node: int = 1
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    nodes: list[Node] = field(default_factory=list)
    address: str = ""

    def __post_init__(self):
        # the cluster's own token (RAY_AUTH_TOKEN: with RAY_AUTH_TOKEN_PATH, Ray 2.60's worker nodes time out
        # asking the GCS for their node info)
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "RAY_TMPDIR_MARKER": str(self.temp_dir)}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(name, None)

    def _start_node(self, name: str, head: bool, ports: list[int]) -> Node:
        args = [sys.executable, "-c", RAY_START, "start", "--block", "--node-ip-address=127.0.0.1",
                f"--num-cpus={self.cpus_per_node}",
                "--num-gpus=0", f"--temp-dir={self.temp_dir}", "--object-store-memory=100000000",
                f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
                f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
                f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}",
                "--disable-usage-stats", "--log-style=record"]
        if head:
            args += ["--head", f"--port={ports[6]}", "--include-dashboard=false"]
            self.address = f"127.0.0.1:{ports[6]}"
        else:
            args += [f"--address={self.address}"]
        with open(self.temp_dir / f"{name}.log", "wb") as log:  # the child keeps its own copy of the handle
            process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        node = Node(name, process, ports[0])
        self.nodes.append(node)
        return node

    def start(self, timeout_s: float = 90.0) -> LocalCluster:
        ports = free_ports(7 * (1 + self.workers))  # at once: no two nodes get the same port
        try:
            self._start_node("head", head=True, ports=ports[:7])
            self._wait_for(1, timeout_s)
            for k in range(self.workers):  # one after the other: two starting nodes on two cores time out
                self._start_node(f"worker{k}", head=False, ports=ports[7 * (k + 1):7 * (k + 2)])
                self._wait_for(2 + k, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def alive_nodes(self) -> int:
        """Nodes the GCS counts as alive (asked from a separate process: this one stays off the cluster)."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True,
                             text=True, timeout=60, check=False)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def _wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for node in self.nodes:
                if node.process.poll() is not None:
                    log = (self.temp_dir / f"{node.name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"ray start for {node.name} exited ({node.process.returncode}):\n{log}")
            if all(n.raylet() is not None for n in self.nodes) and self.alive_nodes() >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray cluster did not reach {count} nodes in {timeout_s:.0f}s")
            time.sleep(1.0)

    def nodes_running(self, title: str) -> list[Node]:
        """The nodes (head first) that run a Ray worker process whose title contains `title` (Ray names a
        process after the task or actor it runs, e.g. "ray::MapWorker(MapBatches(ModelScorer))")."""
        found = []
        for node in self.nodes:
            raylet = node.raylet()
            try:
                children = raylet.children() if raylet is not None else []
                if any(title in " ".join(child.cmdline()) for child in children):
                    found.append(node)
            except psutil.NoSuchProcess:
                continue
        return found

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL `node`'s raylet, from outside; its pid."""
        raylet = node.raylet()
        if raylet is None:
            raise RuntimeError(f"{node.name} has no raylet")
        raylet.send_signal(signal.SIGKILL)
        return raylet.pid

    def stop(self) -> None:
        """Kill every process this cluster started (process groups, then stragglers that use its temp folder:
        Ray daemonises some of them out of the group), and remove the temp folder."""
        for node in self.nodes:
            try:
                os.killpg(node.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        marker = str(self.temp_dir)
        for _ in range(3):
            left = []
            for proc in psutil.process_iter(["cmdline", "environ"]):
                try:
                    text = " ".join(proc.info["cmdline"] or []) + " " + \
                        (proc.info.get("environ") or {}).get("RAY_TMPDIR_MARKER", "")
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                if marker in text and proc.pid != os.getpid():
                    left.append(proc)
            for proc in left:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            if not left:
                break
            psutil.wait_procs(left, timeout=5)
        for node in self.nodes:
            try:
                node.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if not os.environ.get("KEEP_RAY_TEMP"):
            shutil.rmtree(self.temp_dir, ignore_errors=True)
