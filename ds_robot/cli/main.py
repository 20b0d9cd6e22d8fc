"""``ds-robot``: evaluate, render and benchmark the grasp stack.

Errors a user can fix (missing or malformed files, impossible parameters) are printed as one
sentence with exit status 2, not as a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ds_robot.deploy.controllers import CONTROLLERS, controller_for_env
from ds_robot.envs.presets import SPLITS
from ds_robot.errors import ConfigError, DsRobotError
from ds_robot.sim2real import WORLDS

ALGOS = ("a2c", "ppo", "sac")
# Dependencies of some commands only, and the extra that installs each.
OPTIONAL_MODULES = {"torch": "train", "tensorboard": "train", "gymnasium": "sim", "tqdm": "sim", "matplotlib": "sim",
                    "imageio": "sim", "stable_baselines3": "bench", "cpprb": "bench", "pybullet": "bench",
                    "envpool": "bench", "ale_py": "bench", "ray": "dist", "rclpy": "ros"}
BENCHMARKS = ("sim", "cartpole", "per", "humanoid", "amp", "atari", "grasp", "grasp-curve", "grasp-select", "node",
              "sim2real", "supervisor", "robot-install")


def grasp_env_from_args(args, **kwargs):
    """The grasp env of the ``--task`` preset (its ``--split`` object set unless ``--objects``),
    in the world ``--world`` names (``--world-seed`` for the shifted one)."""
    from ds_robot.envs.grasp_env import UR5GraspEnv
    from ds_robot.envs.presets import load_task
    from ds_robot.sim2real.worlds import build_world

    preset = load_task(args.task_preset).env_kwargs(args.split)
    if args.objects is not None:
        preset["objects"] = args.objects
    backend = build_world(getattr(args, "world", "nominal"), args.robot, seed=args.world_seed)
    return UR5GraspEnv(robot=args.robot, backend=backend, **preset, **kwargs)


def controller_from_args(args, env):
    """``--controller`` (with ``--policy``, ``--option``) for ``env``; ``--correction on`` wraps it in
    the online correction of its model."""
    if (args.controller == "fixed") != (args.option is not None):
        raise ConfigError("--option K goes with --controller fixed (and fixed needs it)")
    options = {"option": args.option} if args.option is not None else {}
    return controller_for_env(args.controller, env, policy=args.policy, correction=args.correction == "on",
                              **options)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _add_task_arg(p: argparse.ArgumentParser, default: str) -> None:
    from ds_robot.envs.presets import TASKS

    p.add_argument("--task", dest="task_preset", default=default, metavar="{" + ",".join(TASKS) + "}|YAML",
                   help="task preset (sim/tasks/): realistic = perceived object pose (bias, noise, 30 Hz, latency, "
                        "dropouts), varied start and rest poses, fragile and heavy "
                        "objects, joint sensor noise; occluded = realistic, and the camera cannot see what the "
                        "gripper holds; "
                        f"nominal = ground truth, the first releases' task (default: {default})")


def _add_env_args(p: argparse.ArgumentParser, many_seeds: bool) -> None:
    p.add_argument("--controller", choices=CONTROLLERS, default="hier",
                   help="hier: the hierarchical policy (default); scripted: the model-based baseline; fixed: the "
                        "same machine with one planner option (--option K); flat: one PPO policy")
    p.add_argument("--option", type=int, default=None,
                   help="fixed: the option index K (ds_robot/hier/options.py: DEFAULT_OPTIONS)")
    _add_task_arg(p, "realistic")
    p.add_argument("--split", choices=SPLITS, default="train",
                   help="the preset's training, validation (for choosing among policies) or test object set "
                        "(default: train)")
    p.add_argument("--policy", type=Path, default=None,
                   help="hier: a policy .npz, flat: a ppo checkpoint (default: the one shipped in models/policies)")
    p.add_argument("--objects", type=Path, default=None,
                   help="object-set YAML (default: the --task preset's --split set)")
    p.add_argument("--robot", choices=("ur5", "ur5e"), default="ur5e", help="arm variant (default: ur5e)")
    p.add_argument("--world", choices=WORLDS, default="nominal",
                   help="nominal: the controller's own model; shifted: MuJoCo with hidden physics changes per "
                        "episode (damping, friction, armature, motor gain, payload, object, latency); unmodelled: MuJoCo "
                        "with physics outside the estimator's model (Stribeck and load-dependent friction, "
                        "actuator lag, fractional latency, torque-sensing errors, off-centre payload); pybullet: "
                        "PyBullet from the same URDF")
    p.add_argument("--world-seed", type=int, default=0, help="shifted, unmodelled: the world's seed (default: 0)")
    p.add_argument("--correction", choices=("on", "off"), default="off",
                   help="on: online physics correction of the controller's model (hier and scripted)")
    if many_seeds:
        p.add_argument("--seed", type=int, nargs="+", default=[0],
                       help="base seed(s); each runs --episodes episodes whose seeds derive from it (default: 0)")
    else:
        p.add_argument("--seed", type=int, default=0, help="episode seed (default: 0)")


# ----------------------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    if args.task != "grasp":
        return cmd_eval_policy(args)
    from ds_robot.bench.report import ci_text, format_table, write_json
    from ds_robot.evaluate import per_object, plot_evaluation, run_episodes, summarise

    env = grasp_env_from_args(args)
    controller = controller_from_args(args, env)
    by_seed = {seed: run_episodes(env, controller, args.episodes, seed, progress=not args.quiet) for seed in args.seed}
    results = [r for seed_results in by_seed.values() for r in seed_results]
    overall = summarise(controller.name, results)
    objects = per_object(results)
    seeds = {seed: summarise(f"seed {seed}", rs) for seed, rs in by_seed.items()} if len(by_seed) > 1 else {}
    headers = ["object / seed", "episodes", "success rate [95% CI]", "time to lift s [95% CI]", "energy J [95% CI]"]
    rows = [
        [
            row["name"],
            row["episodes"],
            ci_text(row["success_rate"], row["success_rate_ci95"], digits=3),
            ci_text(row["time_to_lift_s"], row["time_to_lift_s_ci95"]),
            ci_text(row["energy_j"], row["energy_j_ci95"], digits=1),
        ]
        for row in [*objects.values(), *seeds.values(), {**overall, "name": f"ALL ({controller.name})"}]
    ]
    seed_text = " ".join(str(s) for s in args.seed)
    print(f"\ngrasp evaluation: controller={controller.name} task={args.task_preset} robot={args.robot} "
          f"object set={env.object_set.name} "
          f"seeds={seed_text} world={args.world} correction={args.correction}")
    print(format_table(headers, rows))
    print(f"controller step: {overall['control_step_us']:.0f} us mean")
    config = {
        "controller": controller.name,
        "task": args.task_preset,
        "world": args.world,
        "world_seed": args.world_seed,
        "correction": args.correction,
        "robot": args.robot,
        "objects": str(env.object_set.source),
        "episodes_per_seed": args.episodes,
        "seeds": args.seed,
        "control_dt_s": env.control_dt_s,
        "physics_dt_s": env.backend.physics_dt_s,
        "episode_s": env.episode_s,
    }
    if args.json:
        write_json(args.json, "eval_grasp", config,
                   [{**overall, "per_object": objects, "per_seed": list(seeds.values())}])
        print(f"wrote {args.json}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        title = f"{args.controller} on {env.object_set.name} ({len(results)} episodes, seeds {seed_text})"
        plot_evaluation(args.plot, title, overall, objects, results)
        print(f"wrote {args.plot}")
    return 0


def cmd_eval_policy(args) -> int:
    from ds_robot.bench.report import ci_text, format_table, write_json
    from ds_robot.rl.train import evaluate_checkpoint

    if args.checkpoint is None:
        raise ConfigError(f"ds-robot eval {args.task} needs --checkpoint PATH (a file written by ds-robot train)")
    row = evaluate_checkpoint(args.checkpoint, args.episodes, args.seed[0], env_id=args.env, algo=args.task)
    print(format_table(["policy", "env", "trained steps", "episodes", "return [95% CI]", "min", "max"],
                       [[row["name"], row["env"], f"{row['trained_steps']:,}", row["episodes"],
                         ci_text(row["return_mean"], row["return_mean_ci95"], digits=1), row["return_min"],
                         row["return_max"]]]))
    if args.json:
        write_json(args.json, f"eval_{args.task}", {"checkpoint": str(args.checkpoint), "seed": args.seed[0]}, [row])
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------- train


def cmd_train_grasp(args) -> int:
    from ds_robot.hier.train import train_grasp
    from ds_robot.sim2real.worlds import ShiftedMuJoCoBackend

    for flag, value in (("--env", args.env), ("--steps", args.steps),
                        ("--ent-coef", args.ent_coef), ("--replay", args.replay), ("--envs", args.envs),
                        ("--policy", args.policy), ("--checkpoint-every", args.checkpoint_every)):
        if value is not None:
            raise ConfigError(f"{flag} does not apply to train grasp (see ds-robot train --help)")
    if args.address is not None and args.backend != "ray":
        raise ConfigError("--address goes with --backend ray")
    budget_s = (args.budget_minutes if args.budget_minutes is not None else 60.0) * 60.0
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    _, summary = train_grasp(args.out, resume=args.resume, budget_s=budget_s, progress=not args.quiet,
                             seed=args.seed, workers=workers, torque_features=not args.no_torque_features,
                             randomize_physics=True if args.randomize_physics else None, amp=True if args.amp else None,
                             randomized_world=ShiftedMuJoCoBackend, task=args.task_preset,
                             backend=args.backend, ray_address=args.address,
                             objects=str(args.objects) if args.objects else None,
                             object_variation=False if args.no_object_variation else None,
                             planner_fields=tuple(args.planner_fields.split(",")) if args.planner_fields else None,
                             attempt_penalty=args.attempt_penalty, planner_heads=args.planner_heads,
                             energy_weight=args.energy_weight,
                             planner_from=str(args.planner_from) if args.planner_from else None,
                             tracking_weight=args.tracking_weight,
                             escalate_after_slip=True if args.escalate_after_slip else None,
                             jaw_fit=True if args.jaw_fit else None)
    print(f"trained grasp: {summary['steps']:,} steps, {summary['episodes']:,} episodes in "
          f"{summary['seconds'] / 60:.1f} min; policy {args.out / 'policy.npz'}, checkpoint "
          f"{args.out / 'checkpoint.pt'}, progress {args.out / 'progress.csv'}, TensorBoard {args.out / 'tb'}")
    return 0


def cmd_train_sb3(args) -> int:
    from ds_robot.rl.sb3_peer import SB3_ENV_ID, train_sb3_sac

    for flag, value in (("--env", args.env), ("--steps", args.steps), ("--ent-coef", args.ent_coef),
                        ("--replay", args.replay), ("--envs", args.envs), ("--policy", args.policy),
                        ("--workers", args.workers), ("--backend", args.backend), ("--objects", args.objects)):
        if value is not None:
            raise ConfigError(f"{flag} does not apply to train sb3-sac (SB3's SAC defaults on {SB3_ENV_ID})")
    budget_s = (args.budget_minutes if args.budget_minutes is not None else 60.0) * 60.0
    summary = train_sb3_sac(args.out, budget_s, seed=args.seed, resume=args.resume, progress=not args.quiet,
                            task=args.task_preset)
    print(f"trained sb3-sac on {SB3_ENV_ID}: {summary['steps']:,} steps, {summary['episodes']:,} episodes in "
          f"{summary['seconds'] / 60:.1f} min; model {summary['model']}")
    return 0


def cmd_train(args) -> int:
    import torch

    from ds_robot.rl.train import train

    torch.set_num_threads(args.threads)
    if args.algo == "grasp":
        return cmd_train_grasp(args)
    if args.algo == "sb3-sac":
        return cmd_train_sb3(args)
    if args.env is None:
        raise ConfigError(f"ds-robot train {args.algo} needs --env ENV_ID")
    if (args.no_torque_features or args.randomize_physics or args.no_object_variation or args.objects is not None
            or args.planner_fields is not None or args.attempt_penalty is not None or args.planner_heads is not None
            or args.energy_weight is not None or args.planner_from is not None or args.tracking_weight is not None
            or args.escalate_after_slip or args.jaw_fit):
        raise ConfigError("--no-torque-features, --randomize-physics, --no-object-variation, --objects, "
                          "--planner-fields, --attempt-penalty, --energy-weight, --planner-heads, --planner-from, "
                          "--tracking-weight, --escalate-after-slip and --jaw-fit apply to train grasp")
    overrides = {"env_id": args.env, "total_steps": args.steps, "seed": args.seed, "amp": args.amp,
                 "checkpoint_every_steps": args.checkpoint_every}
    if args.ent_coef is not None:
        if args.algo == "sac":
            raise ConfigError("sac learns its entropy temperature; --ent-coef applies to a2c and ppo")
        overrides["ent_coef"] = args.ent_coef  # a number or 'halving'; checked by the config
    for flag, key, value in (("--envs", "n_envs", args.envs), ("--workers", "workers", args.workers),
                             ("--policy", "policy", args.policy),
                             ("--backend", "backend", args.backend), ("--address", "ray_address", args.address)):
        if value is not None:
            if args.algo == "sac":
                raise ConfigError(f"{flag} applies to a2c and ppo")
            overrides[key] = value
    if args.replay is not None:
        if args.algo != "sac":
            raise ConfigError("--replay applies to sac (a2c and ppo are on-policy)")
        overrides["replay"] = args.replay
    budget_s = args.budget_minutes * 60.0 if args.budget_minutes is not None else None
    _, result = train(args.algo, args.out, args.resume, progress=not args.quiet, budget_s=budget_s, **overrides)
    print(f"trained {args.algo} on {args.env}: {result.steps:,} steps in {result.seconds:.1f} s; "
          f"checkpoint {args.out / 'checkpoint.pt'}, TensorBoard logs {args.out / 'tb'}")
    return 0


# ----------------------------------------------------------------------------- render


def cmd_render(args) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from ds_robot.render import render_episode

    suffix = args.out.suffix.lower()
    if suffix not in (".mp4", ".gif", ".png"):
        raise ConfigError(f"--out {args.out}: the file must end in .mp4, .gif or .png")
    env = grasp_env_from_args(args, render_mode="rgb_array", render_size=(args.height, args.width),
                              camera=args.camera)
    controller = controller_from_args(args, env)
    info = render_episode(env, controller, args.out, seed=args.seed, fps=args.fps)
    print(f"wrote {args.out} ({info['frames']} frames; object {info['object']}, success={info['success']})")
    return 0


# ----------------------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    if args.name == "sim":
        from ds_robot.bench.sim import run_sim_benchmark

        return run_sim_benchmark(quick=args.quick, json_path=args.json, repeats=args.repeats, robot=args.robot)
    if args.name == "cartpole":
        from ds_robot.bench.cartpole import run_cartpole_benchmark

        return run_cartpole_benchmark(quick=args.quick, json_path=args.json, seeds=args.seeds, plot_path=args.plot)
    if args.name == "humanoid":
        from ds_robot.bench.humanoid import run_humanoid_benchmark

        return run_humanoid_benchmark(quick=args.quick, json_path=args.json, plot_path=args.plot,
                                      seeds=args.seeds if args.seeds != 5 else 3, steps=args.steps,
                                      workers=args.workers)
    if args.name == "amp":
        from ds_robot.bench.amp import run_amp_benchmark

        return run_amp_benchmark(quick=args.quick, json_path=args.json, seeds=args.seeds)
    if args.name == "atari":
        from ds_robot.bench.atari import run_atari_benchmark

        return run_atari_benchmark(quick=args.quick, json_path=args.json, plot_path=args.plot,
                                   repeats=min(args.repeats, 5), game=args.game)
    if args.name == "grasp":
        from ds_robot.bench.grasp import SETS, VARIANTS, run_grasp_benchmark

        return run_grasp_benchmark(quick=args.quick, json_path=args.json, plot_path=args.plot,
                                   seeds=args.seeds if args.seeds != 5 else 3, episodes=args.episodes,
                                   workers=args.workers, task=args.task_preset,
                                   variants=tuple(args.variants or VARIANTS), sets=tuple(args.sets or SETS),
                                   training_seeds=None if args.members else {})
    if args.name == "grasp-curve":
        from ds_robot.bench.grasp import run_grasp_curve

        if args.run is None:
            raise ConfigError("bench grasp-curve needs --run DIR (a train grasp run directory)")
        return run_grasp_curve(args.run, args.episodes or (10 if args.quick else 100), args.json, args.plot,
                               workers=args.workers, task=args.task_preset)
    if args.name == "grasp-select":
        from ds_robot.bench.grasp_select import run_grasp_select

        if not args.run:
            raise ConfigError("bench grasp-select needs --run PATH for every candidate (a train grasp run directory "
                              "or a policy .npz)")
        return run_grasp_select(args.run, seeds=args.seeds if args.seeds != 5 else 2,
                                episodes=args.episodes or (6 if args.quick else 60), json_path=args.json,
                                workers=args.workers, task=args.task_preset)
    if args.name == "sim2real":
        from ds_robot.bench.sim2real import run_sim2real_benchmark

        return run_sim2real_benchmark(quick=args.quick, json_path=args.json, plot_path=args.plot,
                                      seeds=args.seeds if args.seeds != 5 else 3, episodes=args.episodes,
                                      workers=args.workers, task=args.task_preset,
                                      compensate_latency=not args.no_latency_compensation)
    if args.name == "node":
        from ds_robot.bench.node import run_node_benchmark

        seconds = args.seconds or (5.0 if args.quick else 60.0)
        episodes = args.episodes if args.episodes is not None else (10 if args.quick else 200)
        repeats = args.repeats if args.repeats != 5 else (1 if args.quick else 3)
        return run_node_benchmark(seconds=seconds, quick=args.quick, json_path=args.json, episodes=episodes,
                                  repeats=repeats, realtime_priority=args.realtime_priority)
    if args.name == "supervisor":
        from ds_robot.bench.supervisor import run_supervisor_benchmark

        return run_supervisor_benchmark(trials=args.repeats if args.repeats != 5 else 20, quick=args.quick,
                                        nominal_s=args.seconds or 60.0, json_path=args.json,
                                        realtime_priority=args.realtime_priority)
    if args.name == "robot-install":
        from ds_robot.bench.robot_install import run_robot_install_benchmark

        return run_robot_install_benchmark(json_path=args.json)
    if args.name == "per":
        from ds_robot.bench.per import run_per_benchmark

        return run_per_benchmark(quick=args.quick, json_path=args.json, repeats=args.repeats)
    raise ConfigError(f"unknown benchmark '{args.name}'")


def cmd_quantize(args) -> int:
    from ds_robot.bench.quantize import quantize_report

    scheme = "int8_channel" if args.per_channel else "int8_tensor"
    return quantize_report(args.policy, args.out, scheme, args.episodes, args.success_episodes, args.json,
                           task=args.task_preset)


def cmd_ensemble(args) -> int:
    import dataclasses

    from ds_robot.hier.policy import ensemble

    policy = ensemble(args.policies)
    if args.escalate_after_slip or args.jaw_fit:
        policy = dataclasses.replace(policy, escalate_after_slip=policy.escalate_after_slip or args.escalate_after_slip,
                                     jaw_fit=policy.jaw_fit or args.jaw_fit)
    policy.save(args.out)
    members = policy.meta["ensemble"]["members"]
    print(f"wrote {args.out}: the planner is the mean of {len(members)} planners ("
          + ", ".join(f"{m['file']} seed {m['seed']}" for m in members) + f"), the skills are {members[0]['file']}'s")
    return 0


def cmd_model(args) -> int:
    from ds_robot.model import generate

    return generate.main(["--check"] if args.check else [])


def cmd_objects(args) -> int:
    from ds_robot.paths import sim_dir
    from ds_robot.sim import stress_objects

    try:
        out = args.out or sim_dir() / "objects" / f"{args.name}.yaml"
        path = stress_objects.write_set(out, seed=args.seed, count=args.count, name=args.name)
    except ValueError as exc:
        raise ConfigError(f"objects generate: {exc}") from exc
    print(f"wrote {args.count} objects (set {args.name}, seed {args.seed}) to {path}")
    return 0


def comma_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of distinct names, got {text!r}")
    return items


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds-robot",
                                     description="UR5 grasping and RL building blocks: train, evaluate, render, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate the grasp controller, or a trained a2c/ppo/sac checkpoint")
    p.add_argument("task", choices=("grasp", *ALGOS),
                   help="grasp: a grasp controller; a2c|ppo|sac: a checkpoint of that algorithm (--checkpoint)")
    _add_env_args(p, many_seeds=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="a2c|ppo|sac: the checkpoint to evaluate")
    p.add_argument("--env", default=None, help="a2c|ppo|sac: environment id (default: the checkpoint's)")
    p.add_argument("--episodes", type=positive_int, default=100, help="number of episodes (default: 100)")
    p.add_argument("--json", type=Path, default=None, help="write results as JSON (docs/architecture.md, benchmark output)")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG with per-object success, lift times, energy")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("render", help="render one episode headless (MUJOCO_GL=egl) to .mp4, .gif or .png")
    p.add_argument("task", choices=("grasp",))
    _add_env_args(p, many_seeds=False)
    p.add_argument("--out", type=Path, required=True, help="output file: .mp4, .gif or .png (last frame)")
    p.add_argument("--camera", default="front", help="camera name in the scene (default: front)")
    p.add_argument("--fps", type=positive_int, default=25, help="video frame rate (default: 25)")
    p.add_argument("--width", type=positive_int, default=640)
    p.add_argument("--height", type=positive_int, default=480)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("bench", help="run a benchmark; prints a table, optionally writes JSON")
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("--quick", action="store_true", help="small budget (smoke checks, tests)")
    p.add_argument("--json", type=Path, default=None, help="write results as JSON (docs/architecture.md, benchmark output)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per variant (default: 5)")
    p.add_argument("--realtime-priority", type=int, default=0, choices=range(0, 99), metavar="0-98",
                   help="node/supervisor: run the nodes SCHED_FIFO at this priority (the supervisor one above; "
                        "needs the right to: root or an rtprio limit); 0: normal scheduling (default)")
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="cartpole/humanoid/grasp: seeds per variant (default: 5 for cartpole, 3 for humanoid "
                        "and grasp, 2 for grasp-select)")
    p.add_argument("--steps", type=positive_int, default=None, help="humanoid: step budget per run (default 20000)")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="humanoid/grasp: runs in parallel processes (default: 2)")
    p.add_argument("--run", type=Path, action="append", default=None,
                   help="grasp-curve: a train grasp run directory (repeat for several training seeds); "
                        "grasp-select: a candidate, a run directory or a policy .npz (repeat for each)")
    p.add_argument("--episodes", type=positive_int, default=None,
                   help="grasp: episodes per seed and variant; node: offline grasp episodes per runtime "
                        "(default: 200; --quick: 10)")
    p.add_argument("--seconds", type=positive_float, default=None,
                   help="node: seconds per variant beside the sim node (default: 60; --quick: 5)")
    p.add_argument("--game", default="Pong", help="atari: the game (default: Pong)")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG where the benchmark has one")
    p.add_argument("--robot", choices=("ur5", "ur5e"), default="ur5e", help="sim: arm variant")
    p.add_argument("--sets", type=comma_list, default=None, metavar="SET,...",
                   help=f"grasp: the task's object sets to run, of {', '.join(SPLITS)} (default: train,test; "
                        "best_fixed always chooses its option on train)")
    p.add_argument("--variants", type=comma_list, default=None, metavar="NAME,...",
                   help="grasp: the controllers to run (default: all; see ds_robot/bench/grasp.py)")
    p.add_argument("--members", action=argparse.BooleanOptionalAction, default=True,
                   help="grasp: also run each member of the shipped ensembles alone, for a CI across training "
                        "seeds (default: on: one more run per member and object set)")
    p.add_argument("--no-latency-compensation", action="store_true",
                   help="sim2real: corrected rows without the identified latency's compensation (the ablation)")
    _add_task_arg(p, "realistic")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train the hierarchical grasp controller, or an RL agent on any Gymnasium env")
    p.add_argument("algo", choices=("grasp", *ALGOS, "sb3-sac"),
                   help="grasp: the hierarchical grasp controller; a2c|ppo|sac: an agent on --env; sb3-sac: the "
                        "Stable-Baselines3 SAC peer on ds_robot/UR5GraspCartesian-v0 (bench grasp's sb3_sac)")
    p.add_argument("--env", default=None, help="a2c|ppo|sac: Gymnasium environment id, e.g. CartPole-v1")
    p.add_argument("--no-torque-features", action="store_true",
                   help="grasp: train without the measured-torque observations (the ablation)")
    p.add_argument("--randomize-physics", action="store_true",
                   help="grasp: domain randomisation, the shifted-MuJoCo physics drawn anew every episode")
    p.add_argument("--no-object-variation", action="store_true",
                   help="grasp: train on the objects as listed (default: the task's training_variation, "
                        "each episode's object varied in mass, friction and fragility)")
    p.add_argument("--planner-fields", default=None, metavar="F1,F2,...",
                   help="grasp: the features the planner decides from (default: object_size,attempt,last_grip,"
                        "last_load,last_end,in_hand; names from ds_robot.hier.features)")
    p.add_argument("--attempt-penalty", type=float, default=None, metavar="R",
                   help="grasp: reward charged for each new attempt after a failed grasp (default 0.3)")
    p.add_argument("--energy-weight", type=float, default=None, metavar="W",
                   help="grasp: reward per joule of arm work (default 0.005; rounds 1-8 trained at 0.02)")
    p.add_argument("--planner-heads", type=int, default=None, metavar="K",
                   help="grasp: independently initialised option-value networks the planner averages (default 1)")
    p.add_argument("--planner-from", type=Path, default=None, metavar="POLICY",
                   help="grasp: a policy file (e.g. models/policies/grasp_hier.npz) whose planner chooses, greedy "
                        "and frozen; only the skills train")
    p.add_argument("--tracking-weight", type=float, default=None, metavar="W",
                   help="grasp: reward per step of -W x mean((joint target - joint position)^2 x 100), the "
                        "skills' tracking term (default 0)")
    p.add_argument("--escalate-after-slip", action="store_true",
                   help="grasp: after a slip the planner may choose only a stronger grip, in training and in the "
                        "exported file (hier.features.available_options; the shipped files have it)")
    p.add_argument("--jaw-fit", action="store_true",
                   help="grasp: the planner never closes the jaws across a perceived side wider than they open, in "
                        "training and in the exported file (the shipped files have it)")
    _add_task_arg(p, "realistic")
    p.add_argument("--objects", type=Path, default=None,
                   help="grasp: object-set YAML (default: the --task preset's training set)")
    p.add_argument("--steps", type=positive_int, default=None, help="total environment steps (default: per algo)")
    p.add_argument("--budget-minutes", type=positive_float, default=None,
                   help="stop after this much wall time (a checkpoint is written; --resume continues); "
                        "grasp default: 60")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast + dynamic loss scaling")
    p.add_argument("--ent-coef", default=None, help="a2c/ppo: entropy coefficient, a number or 'halving'")
    p.add_argument("--replay", choices=("uniform", "per", "per_novelty"), default=None, help="sac: replay buffer")
    p.add_argument("--out", type=Path, required=True, help="run directory: checkpoints and TensorBoard logs")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--checkpoint-every", type=positive_int, default=None,
                   help="env steps between checkpoints (default: 50000)")
    p.add_argument("--envs", type=positive_int, default=None, help="a2c/ppo: parallel environments (n_envs)")
    p.add_argument("--workers", type=int, default=None,
                   help="rollout worker processes (0 = step envs in-process); a2c/ppo default 0, grasp default: "
                        "the CPU count")
    p.add_argument("--policy", choices=("a2c_paper", "mlp", "mlp_norm", "cnn"), default=None,
                   help="a2c/ppo network: a2c_paper, the source document's A2C network (a2c default); mlp (ppo default); "
                        "mlp_norm (mlp behind a running observation normaliser); cnn (Atari frames)")
    p.add_argument("--backend", choices=("local", "ray"), default=None,
                   help="a2c/ppo/grasp: rollout workers as local processes (default) or Ray actors")
    p.add_argument("--address", default=None, help="with --backend ray: 'auto' or HOST:PORT (default: local Ray)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quantize", help="int8-quantize a hierarchical policy (.npz) and report error, size, latency")
    p.add_argument("policy", type=Path, help="the fp32 policy file, e.g. models/policies/grasp_hier.npz")
    p.add_argument("--out", type=Path, required=True, help="the int8 policy file to write")
    p.add_argument("--per-channel", action="store_true",
                   help="one scale per channel (first layers per input row, others per output channel) instead of per tensor")
    p.add_argument("--episodes", type=positive_int, default=10,
                   help="fp32 episodes whose observations measure the action error (default: 10)")
    p.add_argument("--success-episodes", type=int, default=50,
                   help="grasp episodes to compare success of fp32 and int8 (default: 50; 0: skip)")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    _add_task_arg(p, "realistic")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("ensemble", help="combine hierarchical policies (.npz, e.g. training seeds) into one whose "
                                        "planner chooses by the mean of their option values")
    p.add_argument("policies", type=Path, nargs="+", help="fp32 policy files with the same options and features")
    p.add_argument("--out", type=Path, required=True, help="the policy file to write")
    p.add_argument("--escalate-after-slip", action="store_true",
                   help="the written file's planner may follow a slip only with a stronger grip (no probe, no grip "
                        "as weak as the one that slipped; hier.features.available_options)")
    p.add_argument("--jaw-fit", action="store_true",
                   help="the written file's planner never closes the jaws across a perceived side wider than they open")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("objects", help="generate the stress object set (objects drawn over what the gripper "
                                        "can grasp; ds_robot/sim/stress_objects.py)")
    p.add_argument("action", choices=("generate",))
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0, the committed set's)")
    p.add_argument("--count", type=positive_int, default=48, help="objects (default: 48, the committed set's)")
    p.add_argument("--name", default="stress", help="the set's name and its objects' name prefix (default: stress)")
    p.add_argument("--out", type=Path, default=None,
                   help="the object-set YAML to write (default: the project's sim/objects/NAME.yaml)")
    p.set_defaults(func=cmd_objects)

    p = sub.add_parser("model", help="regenerate the URDF/MJCF files from models/ur5/ur5.yaml")
    p.add_argument("action", choices=("generate",))
    p.add_argument("--check", action="store_true", help="only check that the committed files are current")
    p.set_defaults(func=cmd_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DsRobotError as exc:
        print(f"ds-robot: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = OPTIONAL_MODULES.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"ds-robot: error: this command needs {exc.name}, which is not installed (the robot-side install "
              f"leaves it out): pip install 'ds-robot[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ds-robot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
