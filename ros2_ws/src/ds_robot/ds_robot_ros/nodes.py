"""``ros2 run ds_robot policy_node``, ``ros2 run ds_robot sim_node`` and ``ros2 run ds_robot supervisor``."""

import sys


def _require_ds_robot():
    try:
        import ds_robot.deploy  # noqa: F401
    except ImportError as exc:
        sys.exit(f"the ds_robot Python package is not importable ({exc}); install it into the Python that runs "
                 "ROS 2: pip install -e /path/to/ds-robot (see the README's ROS 2 section)")


def policy_main() -> int:
    _require_ds_robot()
    from ds_robot.deploy.policy_node import main

    return main()


def sim_main() -> int:
    _require_ds_robot()
    from ds_robot.deploy.sim_node import main

    return main()


def supervisor_main() -> int:
    _require_ds_robot()
    from ds_robot.deploy.supervisor import main

    return main()
