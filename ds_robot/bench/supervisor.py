"""``ds-robot bench supervisor``: how long a dead or stopped policy node leaves its torque on the arm.

The sim node (real time, 500 Hz; it holds the last command like ros2_control's forward
controllers), the supervisor (``ds_robot.deploy.supervisor``, the shipped 20 ms timeout unless
``timeout_s``) and the policy node. Per trial: a new policy node drives the arm; 0.5-1.5 s into
the grasp it gets SIGKILL (odd trials SIGSTOP, then SIGCONT once the arm is at rest). Measured:
the time from the signal to the supervisor's first brake (its state message, received by this
process: it includes DDS delivery), the time until the arm is at rest, and whether the resumed
node stayed off the topic. Then ``nominal_s`` seconds of nominal operation with the supervisor
watching: its trips there are false stops (a policy alive but late). Both modes of the
supervisor, each with its own sim and supervisor: ``process_and_stream`` (the shipped default:
the policy node's process watched through /proc, and the command stream) and ``stream_only``
(``watch_process:=false``: what a supervisor on another machine, or a hang, relies on).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import numpy as np

from ds_robot.bench.report import format_table, write_json
from ds_robot.errors import ConfigError

GOAL_BRAKE_P99_MS = 20.0


def _state(states) -> str | None:
    return json.loads(states[-1][1].data)["state"] if states else None


SUPERVISOR_MODES = {"process_and_stream": "true", "stream_only": "false"}  # the supervisor's watch_process


def _start_enabled_policy(session, rt: tuple = ()):
    """A policy node as deployed: with the operator gate (``require_enable``), enabled once it is
    ready. (Without the gate a node drives from its first second, while DDS discovery still runs
    in it: on this 2-core machine its command stream then had 20-30 ms gaps, false trips.)"""
    from std_srvs.srv import Trigger

    policy = session.start("policy_node", "-p", "state_timeout_s:=0.1", "-p", "require_enable:=true", *rt)
    session.spin(2.0)  # an operator enables seconds after start-up, not in its first second
    end = time.monotonic() + 60.0
    while time.monotonic() < end:
        session.spin(0.5)
        try:
            answer = session.call(Trigger, "/ds_robot_policy/enable", timeout_s=5.0)
        except TimeoutError:
            continue  # not up yet, or the answer was lost (the retry then says "already enabled")
        if answer.success or "already enabled" in answer.message:
            return policy
    raise RuntimeError(f"the policy node never became ready to enable; its log:\n{session.log(policy)[-2000:]}")


def _trials(session, mode: str, trials: int, timeout_s: float, rng, states, commands, joints,
            rt: tuple = ()) -> list[dict]:
    from std_srvs.srv import Trigger

    rows = []
    for trial in range(trials):
        sig = signal.SIGKILL if trial % 2 == 0 else signal.SIGSTOP
        policy = _start_enabled_policy(session, rt)
        ok = session.spin(60, until=lambda: _state(states) == "watching" and commands and any(commands[-1][1].data))
        if not ok:
            rows.append({"mode": mode, "trial": trial, "signal": sig.name, "error": "policy never drove the arm"})
            session.stop(policy)
            continue
        session.spin(float(rng.uniform(0.5, 1.5)))
        false_trip = _state(states) != "watching"
        watched = json.loads(states[-1][1].data).get("watching_pid")  # the process the supervisor watches
        t0 = time.monotonic()
        policy.send_signal(sig)
        braked = session.spin(2.0, until=lambda: _state(states) in ("braking", "stopped"))
        brake_at = next((t for t, m in states if t >= t0 and json.loads(m.data)["state"] in ("braking", "stopped")),
                        math.nan)
        rest = session.spin(10.0, until=lambda: _state(states) == "stopped")
        row = {"mode": mode, "trial": trial, "signal": sig.name, "false_trip_before": false_trip,
               "watching_this_node": watched == policy.pid,
               "brake_ms": (brake_at - t0) * 1e3 if braked and not false_trip else math.nan,
               "reason": json.loads(states[-1][1].data).get("last_reason"),
               "gap_ms": json.loads(states[-1][1].data).get("last_gap_ms"),
               "rest_s": time.monotonic() - t0 if rest else math.nan,
               "speed_at_end_rad_s": float(np.max(np.abs(joints[-1][1].velocity[:6]))) if joints else math.nan}
        if sig == signal.SIGSTOP:
            policy.send_signal(signal.SIGCONT)
            session.spin(1.0)
            row["resumed_node_stayed_off"] = _state(states) == "stopped" and policy.poll() is None
        rows.append(row)
        print(f"  {mode} trial {trial} {sig.name}: "
              + (f"a false trip before the signal ({row['reason']}, {row['gap_ms']:.1f} ms)" if false_trip else
                 f"brake {row['brake_ms']:.1f} ms ({row['reason']}), at rest after {row['rest_s']:.2f} s"))
        session.stop(policy, timeout_s=5.0)
        session.call(Trigger, "/ds_robot_supervisor/rearm")
        session.call(Trigger, "/ds_robot_sim/reset")
    return rows


def _nominal(session, nominal_s: float, states, commands, rt: tuple = ()) -> dict:
    policy = _start_enabled_policy(session, rt)
    session.spin(60, until=lambda: _state(states) == "watching" and commands and any(commands[-1][1].data))
    trips_before = json.loads(states[-1][1].data)["trips"]
    end = time.monotonic() + nominal_s
    while time.monotonic() < end:
        session.spin(min(1.0, end - time.monotonic()))
        if _state(states) != "watching":
            break
    summary = json.loads(states[-1][1].data)
    session.stop(policy, timeout_s=5.0)
    return {"seconds": nominal_s, "false_trips": summary["trips"] - trips_before, "state_at_end": summary["state"],
            "last_gap_ms": summary["last_gap_ms"]}


def _summary(mode: str, rows: list[dict], nominal: dict) -> dict:
    brakes = np.array([r["brake_ms"] for r in rows if "brake_ms" in r])
    finite = brakes[np.isfinite(brakes)]

    def pct(q):
        return float(np.percentile(finite, q)) if finite.size else math.nan

    return {"mode": mode, "trials": len(rows), "braked": int(finite.size), "brake_p50_ms": pct(50),
            "brake_p99_ms": pct(99), "brake_max_ms": float(finite.max()) if finite.size else math.nan,
            "rest_p50_s": float(np.nanmedian([r.get("rest_s", math.nan) for r in rows])) if rows else math.nan,
            "resumed_nodes_stayed_off": all(r.get("resumed_node_stayed_off", True) for r in rows),
            "false_trips_during_trials": sum(bool(r.get("false_trip_before")) for r in rows), "nominal": nominal,
            "rows": rows}


def run_supervisor_benchmark(trials: int = 20, timeout_s: float = 0.02, nominal_s: float = 60.0,
                             json_path: str | None = None, quick: bool = False, realtime_priority: int = 0) -> int:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from ds_robot.deploy.session import RosSession
    from ds_robot.deploy.supervisor import SUPERVISOR_ENV

    trials = 4 if quick else trials
    nominal_s = 5.0 if quick else nominal_s
    if trials < 1 or timeout_s <= 0 or nominal_s < 0:
        raise ConfigError(f"need trials >= 1, timeout > 0, nominal_s >= 0; got {trials}, {timeout_s}, {nominal_s}")
    rng = np.random.default_rng(0)
    results = []
    print(f"bench supervisor: per mode {trials} trials (SIGKILL / SIGSTOP), timeout {timeout_s * 1e3:g} ms, "
          f"then {nominal_s:g} s nominal; modes {', '.join(SUPERVISOR_MODES)}")
    for mode, watch in SUPERVISOR_MODES.items():
        session = RosSession(60 + os.getpid() % 30, "ds_robot_bench_supervisor")
        try:
            states = session.listen(String, "/ds_robot/supervisor/state", latched=True)
            commands = session.listen(Float64MultiArray, "/forward_effort_controller/commands", keep=False)
            joints = session.listen(JointState, "/joint_states", keep=False)
            # with realtime_priority: the sim and the policy node SCHED_FIFO at it, the supervisor one above
            rt = ("-p", f"realtime_priority:={realtime_priority}") if realtime_priority else ()
            rt_supervisor = ("-p", f"realtime_priority:={realtime_priority + 1}") if realtime_priority else ()
            session.start("sim_node", "-p", "seed:=0", *rt)
            session.start("supervisor", "-p", f"command_timeout_s:={timeout_s}", "-p", f"watch_process:={watch}",
                          *rt_supervisor, env=SUPERVISOR_ENV)
            rows = _trials(session, mode, trials, timeout_s, rng, states, commands, joints, rt)
            nominal = _nominal(session, nominal_s, states, commands, rt) if nominal_s > 0 else {}
        finally:
            session.close()
        results.append(_summary(mode, rows, nominal))
    print(format_table(["mode", "trials", "braked", "false trips", "brake P50 ms", "P99 ms", "max ms", "at rest P50 s",
                        "nominal false trips"],
                       [[r["mode"], r["trials"], r["braked"], r["false_trips_during_trials"], f"{r['brake_p50_ms']:.1f}",
                         f"{r['brake_p99_ms']:.1f}", f"{r['brake_max_ms']:.1f}", f"{r['rest_p50_s']:.2f}",
                         f"{r['nominal'].get('false_trips', '-')} in {r['nominal'].get('seconds', 0):g} s"]
                        for r in results]))
    verdicts = [f"{r['mode']}: signal -> brake P99 {r['brake_p99_ms']:.1f} ms over {r['braked']} trials (goal <= "
                f"{GOAL_BRAKE_P99_MS:g}: {'met' if r['brake_p99_ms'] <= GOAL_BRAKE_P99_MS else 'not met'}), "
                f"{r['false_trips_during_trials'] + r['nominal'].get('false_trips', 0)} false trips" for r in results]
    for line in verdicts:
        print(line)
    if json_path:
        write_json(json_path, "supervisor", {"trials": trials, "timeout_s": timeout_s, "nominal_s": nominal_s,
                                              "realtime_priority": realtime_priority,
                                              "quick": quick, "verdict": verdicts}, results)
        print(f"wrote {json_path}")
    return 0
