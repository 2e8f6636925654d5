"""Eq. 6–8 against hand-computed values, the density clipping and the stage schedule."""

import pytest
import torch

from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.losses import (
    PVDLossConfig,
    clamp_density,
    clipped_density_loss,
    colour_loss,
    point_losses,
    ray_rgb_errors,
    rgb_loss,
    volume_aligned_loss,
)
from pvdal_ns.model_components.stages import StageSchedule


def test_volume_colour_rgb_losses_are_mean_squared_errors():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    assert volume_aligned_loss(s, t).item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    assert colour_loss(s, t).item() == pytest.approx(1.25)
    s3, t3 = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0], [5.0, 4.0, 0.0]])
    assert rgb_loss(ray_rgb_errors(s3, t3)).item() == pytest.approx(5 / 6)


def test_the_norm_form_is_the_l2_norm_of_the_residuals():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    assert volume_aligned_loss(s, t, form="norm").item() == pytest.approx(5**0.5)  # torch.norm(s - t)
    assert colour_loss(s, t, form="norm").item() == pytest.approx(torch.norm(s - t).item())
    s3, t3 = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0], [5.0, 4.0, 0.0]])
    assert rgb_loss(ray_rgb_errors(s3, t3), "norm").item() == pytest.approx(torch.norm(s3 - t3).item())
    same = torch.ones(3, 16, requires_grad=True)
    volume_aligned_loss(same, torch.ones(3, 16), form="norm").backward()  # zero residual: no NaN gradient
    assert torch.all(same.grad == 0)
    with pytest.raises(ValueError, match="loss form"):
        colour_loss(s, t, form="l1")


def test_the_volume_loss_clips_its_density_channel_like_the_density_loss():
    # a stock teacher's log σ of −20 in empty space, a student at −3: both below a = −2, no loss there
    student, teacher = torch.zeros(1, 16), torch.ones(1, 16)
    student[0, 0], teacher[0, 0] = -3.0, -20.0
    assert volume_aligned_loss(student, teacher, (-2.0, 7.0)).item() == pytest.approx(15 / 16)
    assert volume_aligned_loss(student, teacher).item() == pytest.approx((17**2 + 15) / 16)  # unclipped
    config = PVDLossConfig(volume_weight=1.0)
    points = lambda phi1: PointOutputs(phi1[:, :1], None, phi1)  # noqa: E731
    assert (point_losses(points(student), points(teacher), 1, config, True)["volume_loss"].item()
            == pytest.approx(15 / 16))


def test_forward_clamping_passes_no_gradient_outside_the_range():
    raw = torch.tensor([[-5.0], [0.0], [9.0]], requires_grad=True)
    phi1 = torch.cat([raw, torch.zeros(3, 15)], -1)
    clamped = clamp_density(PointOutputs(raw, None, phi1), (-2.0, 7.0))
    assert clamped.raw_density[:, 0].tolist() == [-2.0, 0.0, 7.0]
    assert clamped.phi1[:, 0].tolist() == [-2.0, 0.0, 7.0]
    clamped.raw_density.sum().backward()
    assert raw.grad[:, 0].tolist() == [0.0, 1.0, 0.0]
    # in "forward" mode the losses compare the (already clamped) values as they are: Eq. 8 literally
    config = PVDLossConfig(density_weight=1.0, colour_weight=0.0, clip_mode="forward")
    s = PointOutputs(torch.tensor([[-2.0]]), torch.zeros(1, 3))
    t = PointOutputs(torch.tensor([[3.0]]), torch.zeros(1, 3))
    assert point_losses(s, t, 2, config, False)["density_loss"].item() == pytest.approx(25.0)


def test_density_loss_clips_to_a_b():
    # teacher 10 → clipped to 7; teacher -5 → clipped to -2.
    student = torch.tensor([[0.0], [1.0], [8.0], [-3.0]])
    teacher = torch.tensor([[1.0], [10.0], [12.0], [-5.0]])
    # rows: inside (0-1)²=1; teacher above (1-7)²=36; both above → 0; both below → 0
    assert clipped_density_loss(student, teacher, (-2.0, 7.0)).item() == pytest.approx((1 + 36 + 0 + 0) / 4)
    # unclipped: (1 + 81 + 16 + 4) / 4
    assert clipped_density_loss(student, teacher, None).item() == pytest.approx(102 / 4)


def test_density_loss_keeps_a_gradient_when_only_the_student_is_out_of_range():
    student = torch.tensor([[-4.0]], requires_grad=True)
    teacher = torch.tensor([[3.0]])
    loss = clipped_density_loss(student, teacher, (-2.0, 7.0))
    loss.backward()
    assert loss.item() == pytest.approx(49.0)  # (-4 - 3)²
    assert student.grad.item() == pytest.approx(-14.0)


def test_point_losses_follow_the_stage_and_weights():
    config = PVDLossConfig(volume_weight=0.5, density_weight=2.0, colour_weight=3.0)
    s = PointOutputs(raw_density=torch.zeros(2, 1), rgb=torch.zeros(2, 3), phi1=torch.zeros(2, 16))
    t = PointOutputs(raw_density=torch.ones(2, 1), rgb=torch.ones(2, 3), phi1=torch.ones(2, 16))
    stage1 = point_losses(s, t, 1, config, align_volume=True)
    assert set(stage1) == {"volume_loss"} and stage1["volume_loss"].item() == pytest.approx(0.5)
    stage2 = point_losses(s, t, 2, config, align_volume=True)
    assert stage2["density_loss"].item() == pytest.approx(2.0)
    assert stage2["colour_loss"].item() == pytest.approx(3.0)
    assert "volume_loss" not in point_losses(s, t, 2, config, align_volume=False)
    # the authors' decay of ω₁: 0.5 · 0.9^10 at step 10; the other weights stay
    decayed = point_losses(s, t, 2, PVDLossConfig(volume_weight=0.5, density_weight=2.0, colour_weight=3.0,
                                                  volume_weight_decay=0.9), True, step=10)
    assert decayed["volume_loss"].item() == pytest.approx(0.5 * 0.9**10)
    assert decayed["density_loss"].item() == pytest.approx(2.0)


def test_stage_schedule():
    stages = StageSchedule(stage1_steps=10, stage2_steps=20)
    assert [stages.stage_at(s) for s in (0, 9, 10, 29, 30, 1000)] == [1, 1, 2, 2, 3, 3]
    no_phi1 = StageSchedule(stage1_steps=10, stage2_steps=20, has_stage1=False)
    assert [no_phi1.stage_at(s) for s in (0, 19, 20)] == [2, 2, 3]
    assert StageSchedule(10, 20, blockwise=False).stage_at(0) == 3


def test_point_losses_are_zero_when_no_sample_is_occupied():
    empty = PointOutputs(raw_density=torch.zeros(0, 1), rgb=torch.zeros(0, 3), phi1=torch.zeros(0, 16))
    losses = point_losses(empty, empty, 3, PVDLossConfig(), align_volume=True)
    assert set(losses) == {"volume_loss", "density_loss", "colour_loss"}
    assert all(v.item() == 0.0 for v in losses.values())
