"""Run ds-robot's ROS 2 nodes as separate processes on a private ROS domain and talk to them
from this process (rclpy from the PyPI wheels): used by the tests and ``ds-robot bench node``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time


class RosSession:
    """A private rclpy context on ``domain`` and the node processes started in it."""

    def __init__(self, domain: int, name: str = "ds_robot_session"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.domain = domain
        # UDP only: over Fast DDS's shared memory a SIGSTOPped node holds up the writes of every node
        # with a reader in it for ~1 s (the stall and kill tests stop nodes on purpose)
        self.env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1",
                    "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=domain)  # not this process's argv
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.procs: list[subprocess.Popen] = []
        self._clients: dict = {}
        self._logs: dict = {}

    def start(self, module: str, *params: str, env: dict | None = None, python: str | None = None) -> subprocess.Popen:
        """``python -m ds_robot.deploy.<module> --ros-args <params>`` on this session's domain
        (``module`` with a dot: that module; ``env``: extra environment variables for this node;
        ``python``: another interpreter, e.g. a robot-side venv's)."""
        # Output goes to a file, not a pipe: a node must never block on a full pipe nobody reads.
        log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (open while the node runs; closed in close())
        name = module if "." in module else f"ds_robot.deploy.{module}"
        proc = subprocess.Popen([python or sys.executable, "-m", name, "--ros-args", *params],
                                env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        self._logs[proc.pid] = log
        return proc

    def listen(self, msg_type, topic: str, latched: bool = False, keep: bool = True) -> list:
        """Messages on ``topic`` as ``(monotonic receive time, message)``, appended as they arrive."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        box: list = []

        def store(msg):
            if keep:
                box.append((time.monotonic(), msg))
            else:
                box[:] = [(time.monotonic(), msg)]

        self.node.create_subscription(msg_type, topic, store, qos)
        return box

    def call(self, srv_type, name: str, timeout_s: float = 10.0, attempts: int = 3):
        """Call a service and return its response. Clients are created once and kept: a request
        sent by a client that discovery has not fully matched yet can lose its response, so a
        call that gets no answer within ``timeout_s / attempts`` is sent again."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f"service {name} not available after {timeout_s} s")
        for _ in range(attempts):
            future = client.call_async(srv_type.Request())
            if self.spin(timeout_s / attempts, until=future.done):
                return future.result()
            client.remove_pending_request(future)
        raise TimeoutError(f"service {name} did not answer {attempts} requests in {timeout_s} s")

    def spin(self, seconds: float, until=None) -> bool:
        """Process callbacks for up to ``seconds``; True as soon as ``until()`` holds (or at the end
        when no condition is given)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)
            if until is not None and until():
                return True
        return until is None

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = 15.0) -> str:
        """Signal ``proc`` (SIGINT: a clean shutdown), wait, SIGKILL after ``timeout_s``; its log."""
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return self.log(proc)

    def log(self, proc: subprocess.Popen) -> str:
        log = self._logs[proc.pid]
        log.seek(0)
        return log.read()

    def close(self) -> str:
        """Stop every node (SIGINT, then SIGKILL after 15 s) and return their logs."""
        logs = [self.stop(proc) for proc in self.procs]
        for log in self._logs.values():
            log.close()
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        return "\n".join(logs)
