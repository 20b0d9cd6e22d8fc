"""Run ds-robot's ROS 2 nodes as separate processes on a private ROS domain and talk to them
from this process (rclpy from the PyPI wheels): used by the tests and ``ds-robot bench node``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


class RosSession:
    """A private rclpy context on ``domain`` and the node processes started in it."""

    def __init__(self, domain: int, name: str = "ds_robot_session"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.domain = domain
        self.env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1"}
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.procs: list[subprocess.Popen] = []

    def start(self, module: str, *params: str) -> subprocess.Popen:
        """``python -m ds_robot.deploy.<module> --ros-args <params>`` on this session's domain."""
        proc = subprocess.Popen([sys.executable, "-m", f"ds_robot.deploy.{module}", "--ros-args", *params],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
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

    def call(self, srv_type, name: str, timeout_s: float = 10.0):
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f"service {name} not available after {timeout_s} s")
        future = client.call_async(srv_type.Request())
        if not self.spin(timeout_s, until=future.done):
            raise TimeoutError(f"service {name} did not answer in {timeout_s} s")
        self.node.destroy_client(client)
        return future.result()

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
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return out or ""

    def close(self) -> str:
        """Stop every node (SIGINT, then SIGKILL after 15 s) and return their logs."""
        logs = [self.stop(proc) for proc in self.procs]
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        return "\n".join(logs)
