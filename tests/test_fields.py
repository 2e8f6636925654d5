"""The four fields behind one interface: shapes, the ϕ¹/ϕ² split, gradients, parameter groups."""

import pytest
import torch

from pvdal_ns.configs import field_config
from pvdal_ns.fields import VOLUME_FEATURE_DIM
from pvdal_ns.fields.tensors import trilinear

AABB = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])


@pytest.mark.parametrize("architecture", ["hash", "vm", "mlp", "tensors"])
def test_field_split_shapes_and_gradients(architecture):
    field = field_config(architecture, "small").setup(aabb=AABB)
    positions = torch.rand(64, 3) * 3 - 1.5
    directions = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    out = field.query(positions, directions)
    assert out.raw_density.shape == (64, 1)
    assert out.rgb.shape == (64, 3) and (out.rgb >= 0).all() and (out.rgb <= 1).all()
    assert torch.allclose(out.density, torch.exp(out.raw_density))
    if architecture == "tensors":
        assert out.phi1 is None and not field.has_volume_feature
    else:
        assert out.phi1.shape == (64, VOLUME_FEATURE_DIM)
        assert torch.equal(out.phi1[:, :1], out.raw_density)
    assert field.query(positions).rgb is None  # ϕ² only runs with directions
    (out.rgb.sum() + out.raw_density.sum() + field.regularization_loss()).backward()
    groups = field.param_groups()
    assert groups and all(groups.values())
    assert all(p.grad is not None for ps in groups.values() for p in ps if p.requires_grad)
    if architecture == "tensors":  # only the touched voxels carry a gradient
        assert field.grid.grad.is_sparse


def test_trilinear_interpolation_is_exact_on_a_linear_grid():
    r = 5
    axis = torch.linspace(0, 1, r)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # value = position
    x = torch.rand(100, 3)
    assert torch.allclose(trilinear(grid.reshape(-1, 3), r, x), x, atol=1e-6)
