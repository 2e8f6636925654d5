"""Proposal sampling, the second sampler (docs/design.md, "Proposal sampling"): its packed samples hold S samples on
every ray and render as nerfstudio's dense renderers do; its proposal fields, trained by the interlevel loss against
a ray's weights, move the samples to where those weights are."""

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.losses import ray_samples_to_sdist
from nerfstudio.model_components.renderers import RGBRenderer

from pvdal_ns.fields import PointOutputs
from pvdal_ns.fields.proposal import GridDensityField, ProposalFieldConfig
from pvdal_ns.model_components.proposal_sampling import (
    ProposalSampler,
    build_proposal_networks,
    interlevel_loss_against,
)
from pvdal_ns.model_components.sampling import ProposalSampling, Sampling

SETTINGS = ProposalSampling(num_proposal_samples_per_ray=(48, 24), num_samples=16,
                            fields=(ProposalFieldConfig("grid", 16), ProposalFieldConfig("grid", 32)))


def _sampler(seed=0):
    torch.manual_seed(seed)
    sampling = Sampling(SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), contracted=True, proposal=SETTINGS)
    networks = build_proposal_networks(SETTINGS, sampling.space)
    sampler = ProposalSampler(sampling.collider(), SETTINGS, [n.density_fn for n in networks], contracted=True)
    return sampler, networks


def _rays(num_rays=64):
    origins = torch.zeros(num_rays, 3)
    directions = torch.nn.functional.normalize(torch.randn(num_rays, 3), dim=-1)
    return RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(num_rays, 1))


def test_every_ray_holds_its_samples_and_renders_as_nerfstudios_dense_renderer():
    sampler, _ = _sampler()
    rays = _rays()
    samples = sampler(rays)
    num_rays, per_ray = len(rays), SETTINGS.num_samples
    assert len(samples) == num_rays * per_ray and samples.holds_every_sample
    assert samples.valid.all() and samples.complete.all()
    assert torch.equal(samples.ray_indices, torch.arange(num_rays).repeat_interleave(per_ray))
    assert [len(level) for level in samples.proposals.ray_samples] == [num_rays, num_rays]
    assert [w.shape[1] for w in samples.proposals.weights] == list(SETTINGS.num_proposal_samples_per_ray)
    density, rgb = torch.rand(num_rays * per_ray, 1) * 3, torch.rand(num_rays * per_ray, 3)
    background = torch.rand(num_rays, 3)
    out = samples.composite(PointOutputs(raw_density=density.log(), rgb=rgb), RGBRenderer(), background)
    dense = samples.ray_samples.reshape((num_rays, per_ray))
    weights = dense.get_weights(density.view(num_rays, per_ray, 1))
    expected = RGBRenderer()(rgb.view(num_rays, per_ray, 3), weights, background_color=background)
    assert torch.allclose(out["rgb"], expected, atol=1e-5)
    # the edges of its own samples in its spacing are nerfstudio's (what the interlevel loss compares)
    assert torch.allclose(sampler.spacing(samples, rays), ray_samples_to_sdist(dense), atol=1e-5)


def test_the_interlevel_loss_moves_the_samples_to_the_weights_of_a_surface():
    """Proposal fields trained against the weights of a thin surface at distance 3 on every ray (what a teacher gives):
    the loss falls and the final samples gather around the surface."""
    sampler, networks = _sampler()
    rays = _rays(256)
    optimizer = torch.optim.Adam(networks.parameters(), lr=0.1)

    def surface_weights(samples):
        mids = samples.ray_samples.frustums.get_positions().norm(dim=-1, keepdim=True)
        weights = torch.exp(-((mids - 3.0) ** 2) / 0.02)
        return weights / weights.view(len(rays), -1).sum(-1).repeat_interleave(SETTINGS.num_samples)[:, None]

    def near_surface(samples):
        distance = samples.ray_samples.frustums.get_positions().norm(dim=-1)
        return float(((distance - 3.0).abs() < 0.5).float().mean())

    losses = []
    before = near_surface(sampler(rays))
    for _ in range(150):
        samples = sampler(rays)
        loss = interlevel_loss_against(samples.proposals, samples, surface_weights(samples),
                                       sampler.spacing(samples, rays))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sampler.step_cb(0)
        losses.append(float(loss))
    after = near_surface(sampler.eval()(rays))
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10])
    assert after > 0.6 and after > 3 * before


def test_samples_of_another_sampler_give_one_interlevel_target():
    """A teacher's own proposals (another sampler, other counts) are a target the student's levels can learn: their
    edges in the student's spacing are sorted and within [0, 1]."""
    student, _ = _sampler(0)
    other = ProposalSampling(num_proposal_samples_per_ray=(32,), num_samples=24,
                             fields=(ProposalFieldConfig("grid", 8),))
    sampling = Sampling(SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), contracted=True, proposal=other)
    teacher_fields = build_proposal_networks(other, sampling.space)
    teacher = ProposalSampler(sampling.collider(), other, [n.density_fn for n in teacher_fields])
    rays = _rays(32)
    shared = teacher(rays)
    chain = student(rays).proposals
    sdist = student.spacing(shared, rays)
    assert sdist.shape == (32, 25) and (sdist.diff(dim=-1) >= 0).all() and sdist.min() >= 0 and sdist.max() <= 1
    weights = torch.rand(len(shared), 1)
    assert torch.isfinite(interlevel_loss_against(chain, shared, weights, sdist))
    with pytest.raises(ValueError, match="proposal-sampled samples only"):
        interlevel_loss_against(chain, shared.select(torch.rand(len(shared)) < 0.5)[0], weights, sdist)


def test_a_grid_density_field_starts_at_one_and_is_empty_outside_its_cube():
    space = Sampling(SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))).space
    field = GridDensityField(space, 8)
    inside = field.density_fn(torch.rand(100, 3) * 1.8 - 0.9)
    outside = field.density_fn(torch.tensor([[1.5, 0.0, 0.0], [0.0, -3.0, 0.0]]))
    assert torch.allclose(inside, torch.ones_like(inside)) and (outside == 0).all()
