"""Novel poses for pseudo-labels follow the training cameras (docs/design.md, "Method")."""

import json

import torch

from pvdal_ns import EMBEDDED_SCENE
from pvdal_ns.cameras.poses import PoseSampler
from pvdal_ns.data.datamanager import DistillationDataManagerConfig


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


def _looking_at_centre(positions: torch.Tensor) -> torch.Tensor:
    from nerfstudio.cameras.camera_utils import viewmatrix

    return torch.stack([viewmatrix(p, torch.tensor([0.0, 0.0, 1.0]), p) for p in positions])


def test_a_half_orbit_is_sampled_near_its_training_cameras():
    """A capture from one side of the object (a half orbit) is neither an orbit nor forward-facing: novel poses
    stay near the training cameras instead of orbiting to the unseen side."""
    azimuth = torch.linspace(0, torch.pi, 24)  # cameras over 180° only
    positions = torch.stack([azimuth.cos(), azimuth.sin(), torch.full_like(azimuth, 0.3)], dim=-1) * 2.0
    c2w = _looking_at_centre(positions)
    sampler = PoseSampler(c2w, torch.zeros(3), DistillationDataManagerConfig())
    assert sampler.kind == "near training cameras" and not sampler.object_centric
    poses = sampler.sample(200, torch.Generator().manual_seed(0))
    nearest = torch.cdist(poses[:, :, 3], c2w[:, :, 3]).min(dim=1).values
    assert nearest.max() <= sampler.step + 1e-5  # within one camera spacing of a training camera
    assert (poses[:, 1, 3] >= -sampler.step - 1e-5).all()  # none on the unseen side (y < 0)
    rotations = poses[:, :, :3]
    assert torch.allclose(rotations @ rotations.transpose(1, 2), torch.eye(3).expand(200, 3, 3), atol=1e-4)


def test_a_full_orbit_of_the_capture_is_an_orbit():
    azimuth = torch.linspace(0, 2 * torch.pi, 25)[:-1]
    positions = torch.stack([azimuth.cos(), azimuth.sin(), torch.full_like(azimuth, 0.3)], dim=-1) * 2.0
    assert PoseSampler(_looking_at_centre(positions), torch.zeros(3), DistillationDataManagerConfig()).kind == "orbit"


def test_pinhole_rays_are_nerfstudios_rays_and_other_cameras_keep_nerfstudios_generator():
    from nerfstudio.cameras.cameras import Cameras, CameraType
    from nerfstudio.model_components.ray_generators import RayGenerator

    from pvdal_ns.cameras.rays import PinholeRayGenerator, ray_generator

    generator = torch.Generator().manual_seed(0)
    n = 5
    cameras = Cameras(camera_to_worlds=torch.randn(n, 3, 4, generator=generator),
                      fx=torch.rand(n, 1, generator=generator) * 100 + 50, fy=torch.full((n, 1), 70.0),
                      cx=torch.full((n, 1), 40.0), cy=torch.full((n, 1), 30.0), width=80, height=60)
    indices = torch.stack([torch.randint(high, (500,), generator=generator) for high in (n, 60, 80)], -1)
    ours, theirs = ray_generator(cameras), RayGenerator(cameras)
    assert isinstance(ours, PinholeRayGenerator)
    a, b = ours(indices), theirs(indices)
    for key in ("origins", "directions", "pixel_area", "camera_indices"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert torch.equal(a.metadata["directions_norm"], b.metadata["directions_norm"])
    fisheye = Cameras(camera_to_worlds=cameras.camera_to_worlds, fx=70.0, fy=70.0, cx=40.0, cy=30.0, width=80,
                      height=60, camera_type=CameraType.FISHEYE)
    assert isinstance(ray_generator(fisheye), RayGenerator)
