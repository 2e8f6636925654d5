"""The one sampler's packed samples: exact packing renders as nerfstudio's dense renderers do, and fixed-size
packing (what a GPU runs, forced here on the CPU) gives the same renders, losses and hard points, with padding
that counts nowhere and rays cut off by too few slots marked."""

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.renderers import RGBRenderer

from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.hard_points import HardPoints
from pvdal_ns.model_components.losses import PVDLossConfig, point_losses, ray_rgb_errors, rgb_loss
from pvdal_ns.model_components.sampling import PackedSamples, SampleCapacity, Sampling


def _dense(num_rays=24, num_samples=32, seed=0):
    torch.manual_seed(seed)
    sampling = Sampling(SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])), num_samples=num_samples)
    origins = torch.nn.functional.normalize(torch.randn(num_rays, 3), dim=-1) * 4.0
    directions = torch.nn.functional.normalize(-origins + 0.3 * torch.randn(num_rays, 3), dim=-1)
    rays = sampling.collider()(RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(num_rays, 1)))
    dense = sampling.sampler(stratified=False)(rays)
    mask = torch.rand(num_rays, num_samples) < 0.6
    mask[3] = False  # a ray with no occupied sample
    density = torch.rand(num_rays, num_samples, 1) * 8.0
    rgb = torch.rand(num_rays, num_samples, 3)
    return dense, mask, density, rgb


def _points(samples, density, rgb):
    """Point outputs at the slots of ``samples`` from dense [R, S] values (padding gets sample 0's)."""
    flat = samples.sample_index
    return PointOutputs(raw_density=torch.log(density.view(-1, 1)[flat]), rgb=rgb.view(-1, 3)[flat])


def test_packed_compositing_matches_nerfstudios_dense_renderers():
    dense, mask, density, rgb = _dense()
    samples = PackedSamples.pack(dense, mask)
    assert len(samples) == int(mask.sum()) and samples.valid.all() and samples.complete.all()
    assert torch.equal(samples.counts(), mask.sum(-1)) and torch.equal(samples.dense_mask(), mask)
    background = torch.rand(len(mask), 3)
    out = samples.composite(_points(samples, density, rgb), RGBRenderer(), background)
    masked = torch.where(mask[..., None], density, torch.zeros_like(density))
    weights = dense.get_weights(masked)
    expected = RGBRenderer()(rgb, weights, background_color=background)
    assert torch.allclose(out["rgb"], expected, atol=1e-5)
    assert torch.allclose(out["accumulation"], weights.sum(1), atol=1e-5)
    assert torch.allclose(out["weights"][:, 0], weights[mask][:, 0], atol=1e-6)
    assert torch.allclose(out["rgb"][3], background[3])  # an empty ray shows its background


def test_fixed_slots_render_and_reduce_as_exact_packing():
    dense, mask, density, rgb = _dense()
    exact = PackedSamples.pack(dense, mask)
    capacity = SampleCapacity(resize_every=2, margin=1.0, granule=16, fixed=True)
    first = PackedSamples.pack(dense, mask, capacity)  # no size yet: as many slots as dense samples
    assert len(first) == mask.numel() and int(first.valid.sum()) == len(exact) and first.complete.all()
    fixed = PackedSamples.pack(dense, mask, capacity)  # resized to the count seen, rounded up to 16
    assert len(fixed) == -(-len(exact) // 16) * 16 and fixed.complete.all()
    assert torch.equal(fixed.ray_indices[fixed.valid], exact.ray_indices)
    assert torch.equal(fixed.dense_mask(), mask) and torch.equal(fixed.counts(), exact.counts())

    background = torch.rand(len(mask), 3)
    points_exact, points_fixed = _points(exact, density, rgb), _points(fixed, density, rgb)
    out_exact = exact.composite(points_exact, RGBRenderer(), background)
    out_fixed = fixed.composite(points_fixed, RGBRenderer(), background)
    for key in ("rgb", "accumulation", "depth"):
        assert torch.allclose(out_exact[key], out_fixed[key], atol=1e-6), key
    assert (out_fixed["weights"][~fixed.valid] == 0).all()

    # losses over the points count no padding, and the hard points are the same points
    config = PVDLossConfig(density_clip=None)
    student = PointOutputs(points_fixed.raw_density + 0.5, points_fixed.rgb * 0.5)
    wrong_padding = PointOutputs(torch.where(fixed.valid[:, None], student.raw_density, torch.full_like(
        student.raw_density, 100.0)), student.rgb)
    losses_fixed = point_losses(wrong_padding, points_fixed, 2, config, False, valid=fixed.valid)
    losses_exact = point_losses(PointOutputs(points_exact.raw_density + 0.5, points_exact.rgb * 0.5), points_exact,
                                2, config, False)
    for key in losses_exact:
        assert losses_fixed[key].item() == pytest.approx(losses_exact[key].item(), rel=1e-5), key
    rule = HardPoints(fraction=0.3, min_opacity=0.2)
    hard_exact = rule.select(out_exact["weights"], out_exact["weights"] * 0.9, exact, out_exact["accumulation"],
                             out_exact["accumulation"])
    hard_fixed = rule.select(out_fixed["weights"], out_fixed["weights"] * 0.9, fixed, out_fixed["accumulation"],
                             out_fixed["accumulation"])
    assert torch.equal(hard_fixed[fixed.valid], hard_exact) and not hard_fixed[~fixed.valid].any()


def test_too_few_slots_cut_the_last_rays_and_mark_them_incomplete():
    dense, mask, density, rgb = _dense()
    capacity = SampleCapacity(fixed=True)
    capacity.size = int(mask.sum()) - 5  # a batch with more samples than the slots seen so far
    samples = PackedSamples.pack(dense, mask, capacity)
    assert samples.valid.all() and len(samples) == int(mask.sum()) - 5
    last = int(torch.nonzero(mask.any(-1))[-1])
    assert not samples.complete[last] and samples.complete[:last].all()
    # the cut ray carries no L_rgb: its error would be against a render missing samples
    errors = ray_rgb_errors(torch.zeros(len(mask), 3), torch.ones(len(mask), 3))
    errors = torch.where(samples.complete, errors, torch.full_like(errors, 50.0))
    assert rgb_loss(errors, where=samples.complete).item() == pytest.approx(1.0)
    # the capacity grows at its next resize to what it saw, with room to spare
    capacity.packings, capacity.resize_every = 63, 64
    assert capacity.slots(mask.flatten()) >= int(mask.sum())


def test_culling_packs_the_seen_samples_anew():
    from pvdal_ns.model_components.sampling import visible

    dense, mask, density, rgb = _dense()
    samples = PackedSamples.pack(dense, mask, SampleCapacity(fixed=True))
    sigma = _points(samples, density, rgb).density
    keep = visible(samples, sigma, early_stop_eps=1e-2)
    assert not keep[~samples.valid].any() and keep.sum() < samples.valid.sum()
    seen, index = samples.select(keep, SampleCapacity(fixed=True))
    assert int(seen.valid.sum()) == int(keep.sum())
    assert torch.equal(seen.sample_index[seen.valid], samples.sample_index[keep])
    assert torch.equal(seen.ray_indices[seen.valid], samples.ray_indices[keep])
    assert torch.equal(index[seen.valid], torch.nonzero(keep)[:, 0])
