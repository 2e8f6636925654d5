"""Novel poses for pseudo-labels follow the training cameras (docs/design.md, "Method")."""

import json

import torch

from pvdal_ns import EMBEDDED_SCENE
from pvdal_ns.datamanager import DistillationDataManagerConfig
from pvdal_ns.poses import PoseSampler


def _lego_poses():
    frames = json.loads((EMBEDDED_SCENE / "transforms_train.json").read_text())["frames"]
    return torch.tensor([f["transform_matrix"] for f in frames])[:, :3, :]


def test_orbit_poses_look_at_the_centre_within_the_training_range():
    c2w = _lego_poses()
    sampler = PoseSampler(c2w, torch.zeros(3), DistillationDataManagerConfig())
    assert sampler.object_centric
    poses = sampler.sample(200)
    radius = poses[:, :, 3].norm(dim=-1)
    train_radius = c2w[:, :, 3].norm(dim=-1)
    assert radius.min() >= train_radius.min() - 1e-4 and radius.max() <= train_radius.max() + 1e-4
    forward = -poses[:, :, 2]
    to_centre = torch.nn.functional.normalize(-poses[:, :, 3], dim=-1)
    assert torch.allclose((forward * to_centre).sum(-1), torch.ones(200), atol=1e-4)
    up = sampler.up  # mean camera up vector, nerfstudio's convention
    elevation = torch.asin(poses[:, :, 3] @ up / radius)
    train_elevation = torch.asin(c2w[:, :, 3] @ up / train_radius)
    assert elevation.min() >= train_elevation.min() - 1e-3 and elevation.max() <= train_elevation.max() + 1e-3
    assert elevation.min() > 0  # lego's cameras are all above the object: so are the novel ones
    rotations = poses[:, :, :3]
    assert torch.allclose(rotations @ rotations.transpose(1, 2), torch.eye(3).expand(200, 3, 3), atol=1e-4)


def test_forward_facing_poses_stay_near_the_training_cameras():
    n = 20
    c2w = torch.eye(4)[:3].repeat(n, 1, 1)  # all looking down -z
    c2w[:, :, 3] = torch.rand(n, 3) * torch.tensor([1.0, 0.5, 0.1])
    sampler = PoseSampler(c2w, torch.tensor([0.0, 0.0, -3.0]), DistillationDataManagerConfig())
    assert not sampler.object_centric
    poses = sampler.sample(100)
    forward = -poses[:, :, 2]
    angle = torch.rad2deg(torch.acos((forward @ torch.tensor([0.0, 0.0, -1.0])).clamp(-1, 1)))
    assert angle.max() <= 9.0 + 1e-3
    lo, hi = c2w[:, :, 3].min(0).values, c2w[:, :, 3].max(0).values
    grow = (hi - lo) * 0.05 + 1e-5
    assert ((poses[:, :, 3] >= lo - grow) & (poses[:, :, 3] <= hi + grow)).all()
