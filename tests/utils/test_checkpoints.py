"""Checkpoints written with numpy 1 or numpy 2 load with either (pvdal_ns.utils.checkpoints)."""

import pickle
import types
import zipfile

import numpy as np
import pytest
import torch

from pvdal_ns.utils.checkpoints import NUMPY_SCALAR_NAMES, load_checkpoint


def _pickle_module(scalar_name: str) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.save`` whose pickler writes NumPy's scalar reconstructor under
    ``scalar_name`` ("module.name"), as the numpy version that uses that name does."""
    module_name, _, name = scalar_name.rpartition(".")
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor, whatever this numpy calls it

    class Pickler(pickle._Pickler):  # the Python pickler: its save_global can be overridden
        def save_global(self, obj, name_=None):
            if obj is scalar:
                self.write(pickle.GLOBAL + f"{module_name}\n{name}\n".encode())
                self.memoize(obj)
            else:
                super().save_global(obj, name_)

    return types.SimpleNamespace(Pickler=Pickler, __name__="renaming_pickle")


@pytest.mark.parametrize("scalar_name", NUMPY_SCALAR_NAMES)
def test_checkpoint_with_either_numpy_scalar_name_loads(tmp_path, scalar_name):
    path = tmp_path / "step-000000001.ckpt"
    written = {"step": 1, "schedulers": {"fields": {"last_epoch": np.int64(7), "lr": np.float64(0.01)}},
               "pipeline": {"_model.field.aabb": torch.ones(2, 3)}}
    torch.save(written, path, pickle_module=_pickle_module(scalar_name))
    with zipfile.ZipFile(path) as archive:  # the pickle names the scalar as the numpy version that wrote it does
        data = next(archive.read(n) for n in archive.namelist() if n.endswith("/data.pkl"))
    module_name, _, name = scalar_name.rpartition(".")
    assert f"{module_name}\n{name}\n".encode() in data
    assert all(other.encode() not in data.replace(b"\n", b".") for other in NUMPY_SCALAR_NAMES if other != scalar_name)
    loaded = load_checkpoint(path)
    assert loaded["schedulers"]["fields"] == {"last_epoch": 7, "lr": 0.01}
    assert isinstance(loaded["schedulers"]["fields"]["lr"], np.float64)
    assert torch.equal(loaded["pipeline"]["_model.field.aabb"], torch.ones(2, 3))
