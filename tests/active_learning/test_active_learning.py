"""Active learning on hand-made errors: what each level selects, how the pools fill and are replaced,
and that the pools survive a checkpoint round-trip."""

import math

import torch

from pvdal_ns.active_learning.active_learning import ActiveLearning, ActiveLearningConfig, HardPosePool, HardRayPool
from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.hard_points import hard_point_mask, top_fraction_per_ray
from pvdal_ns.model_components.losses import PVDLossConfig, point_losses
from pvdal_ns.model_components.sampling import PackedSamples
from pvdal_ns.utils.checkpoints import load_checkpoint


def test_top_fraction_counts_only_occupied_samples():
    weights = torch.tensor([[0.1, 0.5, 0.2, 0.0, 0.9], [0.3, 0.3, 0.1, 0.2, 0.0]])
    mask = torch.tensor([[True, True, True, False, True], [True, True, True, True, False]])
    keep = top_fraction_per_ray(weights[mask], torch.nonzero(mask)[:, 0], 0.3, 2)  # ceil(0.3 · 4) = 2 per ray
    assert keep.tolist() == [False, True, False, True, True, True, False, False]
    # padding slots (fixed-size packing on a GPU) are never kept, even with weights above a ray's samples
    padded = top_fraction_per_ray(torch.cat([weights[mask], torch.ones(3)]), torch.tensor([0] * 4 + [1] * 7), 0.3, 2,
                                  valid=torch.arange(11) < 8)
    assert padded.tolist() == [False, True, False, True, True, True, False, False, False, False, False]


def _packed(mask):
    """PackedSamples of unit-spaced samples on rays along z, at the True entries of ``mask`` [R, S]."""
    from nerfstudio.cameras.rays import RayBundle

    r, s = mask.shape
    bundle = RayBundle(origins=torch.zeros(r, 3), directions=torch.tensor([[0.0, 0.0, 1.0]] * r),
                       pixel_area=torch.ones(r, 1))
    edges = torch.arange(s + 1, dtype=torch.float32)
    return PackedSamples.pack(bundle.get_ray_samples(edges[:-1].expand(r, s)[..., None],
                                                     edges[1:].expand(r, s)[..., None]), mask)


def test_hard_points_are_the_union_of_teacher_and_student_on_opaque_rays():
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3] = False
    teacher = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.9, 0.1], [0.2, 0.5, 0.1, 0.0]])[..., None]
    student = torch.tensor([[0.1, 0.1, 0.1, 0.7], [0.0, 0.0, 0.8, 0.2], [0.6, 0.1, 0.1, 0.0]])[..., None]
    opacity = torch.tensor([[1.0], [0.9], [0.4]])  # the third ray is too transparent for both
    keep = hard_point_mask(teacher[mask], student[mask], _packed(mask), opacity, opacity, fraction=0.25,
                           min_opacity=0.5)
    assert keep.shape == (11,)
    assert keep.tolist() == [True, False, False, True, False, False, True, False, False, False, False]


def test_each_model_nominates_hard_points_on_the_rays_it_renders_opaque():
    mask = torch.ones(2, 4, dtype=torch.bool)
    teacher = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]])[..., None]
    student = torch.tensor([[0.1, 0.1, 0.1, 0.7], [0.0, 0.9, 0.0, 0.0]])[..., None]
    teacher_opacity = torch.tensor([[1.0], [0.0]])  # the second ray is empty space to the teacher ...
    student_opacity = torch.tensor([[0.3], [0.9]])  # ... where the student has a floater
    keep = hard_point_mask(teacher[mask], student[mask], _packed(mask), teacher_opacity, student_opacity,
                           fraction=0.25, min_opacity=0.5)
    # ray 1: the teacher's top point only (the student renders it transparent); ray 2: the student's floater
    assert keep.tolist() == [True, False, False, False, False, True, False, False]


def test_hard_points_restrict_density_and_colour_losses_only():
    student = PointOutputs(torch.tensor([[1.0], [3.0]]), torch.zeros(2, 3), torch.zeros(2, 16))
    teacher = PointOutputs(torch.tensor([[0.0], [0.0]]), torch.ones(2, 3), torch.ones(2, 16))
    cfg = PVDLossConfig(volume_weight=1.0, density_weight=1.0, colour_weight=1.0, density_clip=None)
    losses = point_losses(student, teacher, 3, cfg, True, hard_points=torch.tensor([True, False]))
    assert math.isclose(float(losses["density_loss"]), 1.0)  # only the first point: (1 − 0)²
    assert math.isclose(float(losses["colour_loss"]), 1.0)
    assert math.isclose(float(losses["volume_loss"]), 1.0)  # L_v keeps both points


def _rays(values):
    n = len(values)
    v = torch.tensor(values, dtype=torch.float32)
    return {"origins": v[:, None].expand(n, 3).clone(), "directions": torch.ones(n, 3), "pixel_area": torch.ones(n, 1),
            "pixels": torch.stack([v.long(), v.long()], dim=-1)}


def test_ray_pool_fills_with_hardest_then_replaces_drawn_slots_in_place():
    pool = HardRayPool(capacity=4, fraction=0.2)  # 2 of every 10 rays
    errors = torch.arange(10, dtype=torch.float32)
    assert pool.draw(2) is None  # still filling
    pool.update(errors, _rays(list(range(10))))
    assert sorted(pool.rays["origins"][:, 0].tolist()) == [8.0, 9.0]
    assert not pool.warm
    pool.update(errors, _rays(list(range(10, 20))))
    assert pool.warm and len(pool) == 4
    drawn = pool.draw(2, generator=torch.Generator().manual_seed(0))
    assert drawn is not None and len(drawn[0]["origins"]) == 2
    before = pool.rays["origins"][:, 0].clone()
    slots = drawn[1]
    hard = torch.zeros(10)
    hard[[3, 6]] = torch.tensor([5.0, 7.0])
    entered = pool.update(hard, _rays(list(range(100, 110))), slots)
    assert sorted(entered.tolist()) == [3, 6]
    after = pool.rays["origins"][:, 0]
    assert sorted(after[slots].tolist()) == [103.0, 106.0]
    untouched = torch.ones(4, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(after[untouched], before[untouched])
    assert len(pool) == 4


def _poses(n):
    c2w = torch.eye(4)[:3].repeat(n, 1, 1)
    c2w[:, 2, 3] = torch.arange(n, dtype=torch.float32) + 1.0  # camera i at z = i + 1
    return c2w


def test_pose_pool_keeps_worst_poses_by_explicit_id_and_replaces_oldest():
    pool = HardPosePool(capacity=3, fraction=0.2)
    pool.reset_epoch(10)
    ids = torch.tensor([0, 1, 2, 3, 7, 7, 9, -1])
    errors = torch.tensor([0.1, 0.2, 0.1, 0.3, 0.9, 0.7, 0.5, 99.0])  # −1: a pool ray, ignored
    pool.record(ids, errors)
    assert math.isclose(float(pool.pose_errors()[7]), 0.8, rel_tol=1e-6)
    assert torch.isnan(pool.pose_errors()[5])  # pose 5 drew no rays
    entered = pool.end_epoch(_poses(10))  # 6 measured poses → ceil(0.2 · 6) = 2
    assert entered.tolist() == [7, 9]
    assert pool.poses[:, 2, 3].tolist() == [8.0, 10.0]
    pool.reset_epoch(10)
    pool.record(torch.tensor([4, 5]), torch.tensor([1.0, 2.0]))
    pool.end_epoch(_poses(10) + 100)
    assert len(pool.poses) == 3 and pool.poses[:, 2, 3].tolist() == [8.0, 10.0, 106.0]
    pool.reset_epoch(10)
    pool.record(torch.tensor([1]), torch.tensor([1.0]))
    pool.end_epoch(_poses(10) + 200)
    assert pool.poses[:, 2, 3].tolist() == [202.0, 10.0, 106.0]  # the oldest slot was replaced


def test_pose_pool_jitter_rotates_about_the_pivot_within_the_limit():
    pool = HardPosePool(capacity=4, fraction=0.5)
    pool._put(_poses(1)[0], 1.0)
    exact = pool.draw(5, jitter_degrees=0.0, pivot=torch.zeros(3))
    assert torch.allclose(exact, _poses(1).expand(5, 3, 4), atol=1e-6)
    drawn = pool.draw(200, jitter_degrees=9.0, pivot=torch.zeros(3), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(drawn[:, :, 3].norm(dim=-1), torch.ones(200), atol=1e-5)  # same distance to the pivot
    angle = torch.rad2deg(torch.acos(drawn[:, 2, 3].clamp(-1, 1)))
    assert float(angle.max()) <= 9.0 + 1e-3 and float(angle.max()) > 4.0
    looks_at_pivot = -drawn[:, :, 2]  # cameras still look at the pivot (they did before)
    assert torch.allclose(looks_at_pivot, -drawn[:, :, 3] / drawn[:, :, 3].norm(dim=-1, keepdim=True), atol=1e-5)


def test_pools_round_trip_through_a_checkpoint(tmp_path):
    al = ActiveLearning(ActiveLearningConfig(pose_pool_size=5, ray_pool_size=4, ray_fraction=0.2))
    al.hard_rays.update(torch.arange(10.0), _rays(list(range(10))))
    al.hard_rays.update(torch.arange(10.0), _rays(list(range(10, 20))))
    al.hard_poses.reset_epoch(3)
    al.hard_poses.record(torch.tensor([0, 1, 2]), torch.tensor([0.5, 0.1, 0.2]))
    al.hard_poses.end_epoch(_poses(3))
    path = tmp_path / "step-000000001.ckpt"
    torch.save({"step": 1, "pipeline": {f"active_learning.{k}": v for k, v in al.state_dict().items()}}, path)
    state = load_checkpoint(path)["pipeline"]  # weights_only=True, as nerfstudio and our loader read it
    restored = ActiveLearning(ActiveLearningConfig(pose_pool_size=5, ray_pool_size=4, ray_fraction=0.2))
    restored.load_state_dict({k[len("active_learning."):]: v for k, v in state.items()})
    assert torch.equal(restored.hard_poses.poses, al.hard_poses.poses)
    assert torch.equal(restored.hard_poses.errors, al.hard_poses.errors)
    for key, value in al.hard_rays.rays.items():
        assert torch.equal(restored.hard_rays.rays[key], value), key
    assert restored.hard_rays.warm


def test_hard_pose_figure_of_a_student_equal_to_its_teacher():
    """A warm-started hash or MLP student of its own architecture is its teacher: every pose error is 0, and
    the epoch's figure must still be drawn (it divided by the largest error)."""
    from nerfstudio.cameras.cameras import Cameras

    from pvdal_ns.active_learning.images import hard_poses_figure

    angles = torch.linspace(0, 2 * math.pi, 5)[:-1]
    c2w = torch.zeros(4, 3, 4)
    c2w[:, :3, :3] = torch.eye(3)
    c2w[:, 0, 3], c2w[:, 1, 3], c2w[:, 2, 3] = 4 * angles.cos(), 4 * angles.sin(), 1.0
    cameras = Cameras(camera_to_worlds=c2w, fx=50.0, fy=50.0, cx=50.0, cy=50.0, width=100, height=100)
    fig = hard_poses_figure(cameras, torch.zeros(3), torch.zeros(4, dtype=torch.bool), torch.tensor([1]),
                            torch.zeros(4), epoch=3)
    assert len(fig.axes) == 1


def test_feed_is_the_one_mutation_of_a_step_and_closes_the_epoch_its_batch_ends():
    """The pipeline feeds active learning once a step: pose statistics and ray pool from the step's errors, the pool
    slots the batch drew overwritten, the epoch closed by the batch that carries its end; reading changes nothing."""
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.cameras.rays import RayBundle

    from pvdal_ns.active_learning.active_learning import EpochEnd

    al = ActiveLearning(ActiveLearningConfig(ray_pool_size=4, ray_fraction=0.2, pose_fraction=0.5, start_step=5),
                        num_poses=3, image_size=(10, 10))
    rays = _rays(list(range(10)))
    ray_bundle = RayBundle(origins=rays["origins"], directions=rays["directions"], pixel_area=rays["pixel_area"])
    indices = torch.cat([torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])[:, None], rays["pixels"]], dim=-1)
    errors = torch.arange(10.0)
    assert al.feed(4, ray_bundle, {"indices": indices}, errors) == {}  # before its start: nothing
    assert len(al.hard_rays) == 0 and al.pooled_rays(10, 4) is None
    metrics = al.feed(5, ray_bundle, {"indices": indices}, errors)
    assert len(al.hard_rays) == 2 and float(metrics["al_ray_pool_fill"]) == 0.5 and "al_overhead_ms" in metrics
    al.feed(6, ray_bundle, {"indices": indices}, errors)
    assert al.hard_rays.warm
    before = {k: v.clone() for k, v in al.hard_rays.rays.items()}
    pooled, slots = al.pooled_rays(10, 7)  # a read: the pool is as it was
    assert len(slots) == 2 and all(torch.equal(before[k], al.hard_rays.rays[k]) for k in before)
    c2w = torch.eye(4)[:3].repeat(3, 1, 1)
    cameras = Cameras(camera_to_worlds=c2w, fx=5.0, fy=5.0, cx=5.0, cy=5.0, width=10, height=10)
    end = EpochEnd(epoch=0, cameras=cameras, from_pool=torch.zeros(3, dtype=torch.bool))
    assert al.ended is None and al.poses_from_pool(3, 7) == 0
    al.feed(7, ray_bundle, {"indices": indices, "pool_slots": slots, "epoch_end": end}, errors.flip(0))
    assert sorted(al.hard_rays.rays["origins"][slots, 0].tolist()) == [0.0, 1.0]  # the drawn slots, overwritten
    ended = al.ended
    assert ended is not None and ended.step == 7 and ended.epoch == 0
    # per-pose mean errors over the three steps fed (5, 6: 0..9; 7: 9..0): pose 2 16/3, pose 1 4, pose 0 19/6
    assert torch.equal(ended.hardest, torch.tensor([2, 1]))
    assert len(al.hard_poses.poses) == 2 and al.poses_from_pool(3, 8) == 2
    assert torch.isnan(al.hard_poses.pose_errors()).all()  # fresh statistics for the next epoch
    al.follow("the leader")
    assert al.pooled_rays(10, 8) is None and al.poses_from_pool(3, 8) == 0 and al.hard_points_at(8) is not None
