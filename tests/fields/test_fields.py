"""The four fields behind one interface: shapes, the ϕ¹/ϕ² split, gradients, parameter groups."""

import copy

import pytest
import torch

from pvdal_ns.fields import VOLUME_FEATURE_DIM
from pvdal_ns.fields.tensors import trilinear
from pvdal_ns.method_configs import field_config

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


def _tcnn_state(field):
    """``field``'s state dict as a tiny-cuda-nn machine writes it: the hash grid is one flat parameter vector,
    ``encoding.tcnn_encoding.params`` (fp32 master copy of tcnn's fp16 tables), and there is no ``hash_table``."""
    state = dict(field.state_dict())
    table = state.pop("encoding.hash_table")
    state["encoding.tcnn_encoding.params"] = torch.zeros(table.numel() - 8)  # tcnn's own size differs
    return state


def test_hash_field_records_the_implementation_it_uses():
    import yaml
    from nerfstudio.utils.external import TCNN_EXISTS

    from pvdal_ns.method_configs import pvdal_hash_small

    config = pvdal_hash_small.config.pipeline.model.field
    assert config.implementation == ("tcnn" if TCNN_EXISTS else "torch")
    field = config.setup(aabb=AABB)
    assert (field.encoding.tcnn_encoding is not None) == (config.implementation == "tcnn")
    assert f"implementation: {config.implementation}" in yaml.dump(pvdal_hash_small.config)  # config.yml records it


def test_old_hash_config_without_implementation_reads_as_torch():
    import yaml

    from pvdal_ns.method_configs import pvdal_hash_small
    from pvdal_ns.utils.run_config import fill_missing_defaults

    text = yaml.dump(pvdal_hash_small.config)
    old = "\n".join(line for line in text.splitlines() if "implementation:" not in line)  # written before the field
    config = fill_missing_defaults(yaml.load(old, Loader=yaml.Loader))
    assert config.pipeline.model.field.implementation == "torch"


def test_tcnn_hash_checkpoint_is_refused_without_tinycudann():
    from nerfstudio.utils.external import TCNN_EXISTS

    if TCNN_EXISTS:
        pytest.skip("tinycudann is importable here: a tcnn checkpoint loads")
    field = field_config("hash", "small").setup(aabb=AABB)
    with pytest.raises(RuntimeError, match="tiny-cuda-nn's layout and tinycudann is not importable here"):
        field.load_state_dict(_tcnn_state(field))
    field.load_state_dict(field.state_dict())  # its own layout loads
    tcnn = field_config("hash", "small")
    tcnn.implementation = "tcnn"
    with pytest.raises(RuntimeError, match="tiny-cuda-nn's hash grid .* tinycudann is not importable here"):
        tcnn.setup(aabb=AABB)  # no silent fallback to torch (its checkpoints would not match config.yml)


def test_tcnn_hash_teacher_is_refused_naming_the_layout(tmp_path):
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.utils.external import TCNN_EXISTS

    from pvdal_ns.method_configs import pvdal_hash_small
    from pvdal_ns.teachers.pvd import load_pvd_teacher
    from pvdal_ns.utils.errors import TeacherLoadError

    config = copy.deepcopy(pvdal_hash_small.config)  # the method's config is shared
    model = config.pipeline.model.setup(scene_box=SceneBox(aabb=AABB), num_train_data=1, metadata={})
    state = {("field." + k): v for k, v in _tcnn_state(model.field).items()}
    state.update({k: v for k, v in model.state_dict().items() if not k.startswith("field.")})
    if TCNN_EXISTS:
        pytest.skip("tinycudann is importable here: a tcnn teacher loads")
    with pytest.raises(TeacherLoadError, match="tiny-cuda-nn's layout.*install tinycudann"):
        load_pvd_teacher(config, state, 0, "cpu", tmp_path / "config.yml", None)
    config.pipeline.model.field.implementation = "tcnn"  # what its config.yml says on the machine that wrote it
    with pytest.raises(TeacherLoadError, match="tiny-cuda-nn's layout"):
        load_pvd_teacher(config, state, 0, "cpu", tmp_path / "config.yml", None)
    teacher = load_pvd_teacher(config, dict(model.state_dict()), 0, "cpu", tmp_path / "config.yml", None)
    assert config.pipeline.model.field.implementation == "torch"  # a torch checkpoint builds torch's grid
    assert teacher.model.field.encoding.tcnn_encoding is None
