"""The generated URDF/MJCF match the parameter file and the DH kinematics."""

import mujoco
import numpy as np
import pybullet
import pytest

from ds_robot.model import generate
from ds_robot.model.params import ARM_JOINT_NAMES, ARM_VARIANTS, LINK_NAMES, default_description, dh_forward_kinematics
from ds_robot.paths import models_dir

DESC = default_description()


def test_generated_files_are_current():
    assert generate.stale_files(models_dir(), DESC) == [], "run: python -m ds_robot.model.generate"


def test_stale_file_is_detected(tmp_path):
    for name, text in generate.generated_files(DESC).items():
        (tmp_path / name).write_text(text)
    (tmp_path / "ur5.xml").write_text((tmp_path / "ur5.xml").read_text().replace('mass="8.393"', 'mass="9"'))
    assert generate.stale_files(tmp_path, DESC) == ["ur5.xml"]


def _flange_mujoco(model, data, q):
    data.qpos[:6] = q
    mujoco.mj_kinematics(model, data)
    site = model.site("flange").id
    return data.site_xpos[site].copy(), data.site_xmat[site].reshape(3, 3).copy()


@pytest.mark.parametrize("variant", ARM_VARIANTS)
def test_mjcf_forward_kinematics_matches_dh(variant):
    arm = DESC.variant(variant)
    model = mujoco.MjModel.from_xml_path(str(models_dir() / f"{variant}.xml"))
    data = mujoco.MjData(model)
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.uniform(-np.pi, np.pi, 6)
        pos, rot = _flange_mujoco(model, data, q)
        reference = dh_forward_kinematics(arm, q)
        assert np.linalg.norm(pos - reference[:3, 3]) < 1e-3
        assert np.allclose(rot, reference[:3, :3], atol=1e-6)


@pytest.fixture
def bullet():
    client = pybullet.connect(pybullet.DIRECT)
    yield client
    pybullet.disconnect(client)


@pytest.mark.parametrize("variant", ARM_VARIANTS)
def test_urdf_forward_kinematics_matches_dh_in_pybullet(variant, bullet):
    arm = DESC.variant(variant)
    robot = pybullet.loadURDF(str(models_dir() / f"{variant}.urdf"), useFixedBase=True, physicsClientId=bullet)
    joints = {pybullet.getJointInfo(robot, j, physicsClientId=bullet)[1].decode(): j
              for j in range(pybullet.getNumJoints(robot, physicsClientId=bullet))}
    links = {pybullet.getJointInfo(robot, j, physicsClientId=bullet)[12].decode(): j for j in joints.values()}
    rng = np.random.default_rng(2)
    for _ in range(50):
        q = rng.uniform(-np.pi, np.pi, 6)
        for name, value in zip(ARM_JOINT_NAMES, q, strict=False):
            pybullet.resetJointState(robot, joints[name], value, physicsClientId=bullet)
        state = pybullet.getLinkState(robot, links["flange"], computeForwardKinematics=True, physicsClientId=bullet)
        pos = np.array(state[4])
        rot = np.array(pybullet.getMatrixFromQuaternion(state[5])).reshape(3, 3)
        reference = dh_forward_kinematics(arm, q)
        assert np.linalg.norm(pos - reference[:3, 3]) < 1e-3
        assert np.allclose(rot, reference[:3, :3], atol=1e-5)


@pytest.mark.parametrize("variant", ARM_VARIANTS)
def test_masses_limits_and_ranges_match_parameter_file(variant, bullet):
    arm = DESC.variant(variant)
    model = mujoco.MjModel.from_xml_path(str(models_dir() / f"{variant}.xml"))
    for i, link in enumerate(LINK_NAMES):
        assert model.body(link).mass[0] == pytest.approx(arm.link_mass_kg[i])
        joint = model.joint(ARM_JOINT_NAMES[i])
        assert tuple(joint.range) == pytest.approx(arm.joint_range_rad[i])
        assert model.dof_damping[joint.dofadr[0]] == pytest.approx(DESC.joint_dynamics.damping_nm_s_rad[i])
        assert model.dof_armature[joint.dofadr[0]] == pytest.approx(DESC.joint_dynamics.armature_kg_m2[i])
        limit = arm.joint_torque_limit_nm[i]
        assert tuple(model.actuator(ARM_JOINT_NAMES[i].replace("_joint", "_motor")).ctrlrange) == (-limit, limit)
    assert model.body("base").mass[0] == pytest.approx(arm.base_mass_kg)
    assert np.allclose(model.key("home").qpos, DESC.home_qpos_rad)

    robot = pybullet.loadURDF(str(models_dir() / f"{variant}.urdf"), useFixedBase=True, physicsClientId=bullet)
    by_name = {pybullet.getJointInfo(robot, j, physicsClientId=bullet)[1].decode(): j
               for j in range(pybullet.getNumJoints(robot, physicsClientId=bullet))}
    for i, name in enumerate(ARM_JOINT_NAMES):
        info = pybullet.getJointInfo(robot, by_name[name], physicsClientId=bullet)
        assert (info[8], info[9]) == pytest.approx(arm.joint_range_rad[i])
        assert info[10] == pytest.approx(arm.joint_torque_limit_nm[i])
        assert pybullet.getDynamicsInfo(robot, by_name[name], physicsClientId=bullet)[0] == pytest.approx(
            arm.link_mass_kg[i])


def test_ur5_and_ur5e_differ_as_published():
    ur5, ur5e = DESC.variant("ur5"), DESC.variant("ur5e")
    assert ur5.dh_d_m[0] == pytest.approx(0.089159) and ur5e.dh_d_m[0] == pytest.approx(0.1625)
    assert ur5.link_mass_kg[1] == pytest.approx(8.393) and ur5e.link_mass_kg[1] == pytest.approx(8.058)
