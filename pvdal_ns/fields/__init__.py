"""The four PVD fields behind one interface (paper Table 1)."""

from pvdal_ns.fields.base import VOLUME_FEATURE_DIM, PointOutputs, PVDField, PVDFieldConfig
from pvdal_ns.fields.hash import HashField, HashFieldConfig
from pvdal_ns.fields.mlp import MLPField, MLPFieldConfig
from pvdal_ns.fields.tensors import TensorsField, TensorsFieldConfig
from pvdal_ns.fields.vm import VMField, VMFieldConfig

__all__ = [
    "VOLUME_FEATURE_DIM",
    "PointOutputs",
    "PVDField",
    "PVDFieldConfig",
    "HashField",
    "HashFieldConfig",
    "MLPField",
    "MLPFieldConfig",
    "TensorsField",
    "TensorsFieldConfig",
    "VMField",
    "VMFieldConfig",
]
