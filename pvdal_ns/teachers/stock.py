"""Stock nerfstudio models as teachers: nerfacto, instant-ngp, tensorf, vanilla-nerf, splatfacto.

Each family is a nerfstudio ``Field`` queried at arbitrary points through its own ``get_density`` /
``get_outputs`` (so appearance embeddings, scene contraction and activations are the model's own).
What a family exposes decides which PVD losses it can feed:

============  ==========================  =====================================================
family        field queried               ϕ¹ volume feature (L_v, stage 1)
============  ==========================  =====================================================
nerfacto      ``model.field``             yes: raw density + the 15 ``mlp_base`` features
instant-ngp   ``model.field``             yes: as nerfacto (same ``NerfactoField``)
tensorf       ``model.field``             no (density is a sum of VM components)
vanilla-nerf  ``model.field_fine``        no (256-d base features)
============  ==========================  =====================================================

None of them has an occupancy grid the student can share, so the teacher builds one from its own
density on the student's grid (:class:`~pvdal_ns.model_components.sampling.Sampling`). The raw density compared by L_σ
is log σ (Eq. 8 compares log-space densities of teachers with other activations).

splatfacto (3D Gaussians) has no density field: it is distilled from its renders only
(:class:`SplatfactoTeacher`), on CUDA, where gsplat rasterises.

Compiled CUDA code: a teacher of the field families runs on plain torch ops (its field, our occupancy-masked
samples), so an instant-ngp *teacher* needs nothing of nerfacc's compiled CUDA ops; *training or rendering*
instant-ngp itself does (its packed ray marching). :func:`nerfacc_cuda_problem` says, cheaply where it can, why
they cannot load; :func:`gsplat_cuda_problem` does the same for gsplat, which splatfacto teachers render with.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import shutil
import sys
from itertools import product
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.models.base_model import Model
from nerfstudio.models.nerfacto import NerfactoModel
from nerfstudio.utils.external import TCNN_EXISTS
from torch import Tensor

from pvdal_ns.fields import VOLUME_FEATURE_DIM, PointOutputs
from pvdal_ns.model_components.occupancy import OccupancyGrid
from pvdal_ns.model_components.proposal_sampling import ProposalSampler
from pvdal_ns.model_components.sampling import ProposalSampling, Sampling
from pvdal_ns.model_components.teacher_batch import Capability, TeacherImages
from pvdal_ns.teachers.base import ModelTeacher
from pvdal_ns.teachers.edits import SH_C0, SceneEdit, within
from pvdal_ns.utils.errors import TeacherLoadError, first_line
from pvdal_ns.utils.library_internals import offline_lpips

LOG_DENSITY_RANGE = (-20.0, 20.0)
"""log σ of stock teachers is clamped here (σ = 0 outside nerfacto's contracted box, ReLU zeros of
tensorf); far beyond the density clip [−2, 7] of Eq. 8."""

IGNORED_KEYS = ("lpips.",)
"""State-dict prefixes that are not part of the radiance field (metric networks)."""


def point_samples(positions: Float[Tensor, "N 3"], directions: Float[Tensor, "N 3"]) -> RaySamples:
    """Zero-length nerfstudio ``RaySamples`` [N, 1] at exactly ``positions`` (camera index 0), so a
    stock field's ``get_density``/``get_outputs`` can be evaluated at arbitrary points."""
    zeros = positions.new_zeros(len(positions), 1, 1)
    frustums = Frustums(origins=positions[:, None], directions=directions[:, None], starts=zeros, ends=zeros,
                        pixel_area=torch.ones_like(zeros))
    return RaySamples(frustums=frustums, camera_indices=zeros.long())


class FieldTeacher(ModelTeacher):
    """A stock nerfstudio model whose field is queried at the shared sample points.

    Args:
        model: the trained model.
        field: the model's ``Field`` to query (e.g. vanilla-nerf's fine field).
        family: family name for messages ("nerfacto", …).
        source: the config path.
        sampling: the student's scene box and grid settings; the occupancy grid is built from the
            teacher's density on that grid (nerfacc's warm-up update, every cell, ``grid_passes`` times).
        chunk: points per field evaluation (bounds memory).
        proposal_sampler: the model's own proposal sampling (nerfacto's, :func:`own_proposals`), if any.
    """

    grid_passes = 3

    def __init__(self, model: Model, field: Field, family: str, source: Path, sampling: Sampling,
                 chunk: int = 1 << 16, proposal_sampler: Optional[ProposalSampler] = None) -> None:
        self.field, self.family, self.chunk = field, family, chunk
        device = next(iter(model.parameters()), torch.empty(0)).device
        grid = OccupancyGrid(sampling.space, sampling.grid_resolution).to(device)
        capabilities = Capability.RAYS | Capability.IMAGES | Capability.POINTS
        super().__init__(model, source, grid, sampling, capabilities, proposal_sampler)
        if self._evaluate(sampling.scene_box.get_center()[None].float().to(device), None).phi1 is not None:
            self.capabilities |= Capability.VOLUME_FEATURE
        self._fill_grid(sampling)

    @property
    def name(self) -> str:
        return self.family

    def _fill_grid(self, sampling: Sampling) -> None:
        self.occupancy_grid.fill(lambda x: self.query_points(x).density, sampling.step_size, sampling.grid_threshold,
                                 self.grid_passes, self.chunk)

    def _evaluate(self, positions: Float[Tensor, "N 3"], directions: Optional[Float[Tensor, "N 3"]]) -> PointOutputs:
        samples = point_samples(positions, directions if directions is not None else torch.zeros_like(positions))
        density = self.field.get_density(samples)
        density, embedding = density if isinstance(density, tuple) else (density, None)
        raw = density.reshape(-1, 1).clamp_min(1e-30).log().clamp(*LOG_DENSITY_RANGE)
        rgb = None
        if directions is not None:
            outputs = self.field.get_outputs(samples, density_embedding=embedding)
            rgb = (outputs[FieldHeadNames.RGB] if isinstance(outputs, dict) else outputs).reshape(-1, 3)
        phi1 = None
        if embedding is not None and embedding.shape[-1] == VOLUME_FEATURE_DIM - 1:
            phi1 = torch.cat([raw, embedding.reshape(-1, VOLUME_FEATURE_DIM - 1).to(raw)], dim=-1)
        return PointOutputs(raw_density=raw, rgb=rgb, phi1=phi1)

    def _query_points(
        self, positions: Float[Tensor, "N 3"], directions: Optional[Float[Tensor, "N 3"]]
    ) -> PointOutputs:
        """log σ, colour (with ``directions``) and ϕ¹ (nerfacto family only), in chunks of ``chunk`` points."""
        parts = [self._evaluate(positions[i : i + self.chunk],
                                None if directions is None else directions[i : i + self.chunk])
                 for i in range(0, len(positions), self.chunk)]

        def cat(name: str) -> Optional[Tensor]:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return PointOutputs(raw_density=cat("raw_density"), rgb=cat("rgb"), phi1=cat("phi1"))  # type: ignore[arg-type]


class SplatfactoTeacher(ModelTeacher):
    """A splatfacto model (3D Gaussian splatting) as teacher: it has no density, colour or ϕ¹ at points,
    so the student learns from its renders only (RGB on random backgrounds, which carries its opacity).

    The occupancy grid of the shared sample points marks the cells of every Gaussian with opacity ≥
    ``min_opacity``: its centre and the corners of its ±2σ box (largest scale), grown by one cell.

    Args:
        model: the trained ``SplatfactoModel`` (on CUDA to render: gsplat's rasteriser).
        source: the config path.
        sampling: the student's scene box, grid resolution and samples per ray.
    """

    min_opacity = 0.005

    def __init__(self, model: Model, source: Path, sampling: Sampling) -> None:
        grid = OccupancyGrid(sampling.space, sampling.grid_resolution).to(model.device)
        super().__init__(model, source, grid, sampling, Capability.IMAGES)
        self._mark_grid()

    @torch.no_grad()
    def _mark_grid(self) -> None:
        model = self.model
        keep = torch.sigmoid(model.opacities).flatten() >= self.min_opacity
        means = model.means[keep]
        radius = 2.0 * torch.exp(model.scales[keep]).amax(dim=-1, keepdim=True)
        corners = torch.tensor(list(product((-1.0, 1.0), repeat=3)), device=means.device)
        self.occupancy_grid.mark(torch.cat([means, (means[:, None] + radius[:, None] * corners).reshape(-1, 3)]))

    @property
    def name(self) -> str:
        return "splatfacto"

    @torch.no_grad()
    def apply_edit(self, edit: SceneEdit) -> None:
        """Edit the Gaussians by where their means fall (issue #34): those the edit empties are dropped (opacity 0);
        those in a recolour box take its colour (replace: the constant SH term, the view-dependent ones zeroed;
        multiply: every SH coefficient scaled, so the colour is multiplied exactly before clamping). The grid is
        marked again from the Gaussians kept.

        Raises:
            BadInputError: a box holding no Gaussian of opacity ≥ :attr:`min_opacity`."""
        model = self.model
        visible = torch.sigmoid(model.opacities).flatten() >= self.min_opacity
        means = model.means
        edit.check_touches(means[visible], "no Gaussian of the teacher")
        params = model.gauss_params
        params["opacities"].data[edit.emptied(means)] = -20.0  # sigmoid(−20) ≈ 2e-9
        sh = model.config.sh_degree > 0
        for box, rgb in edit.recolor:
            inside = within(box, means)
            rgb = rgb.to(means)
            dc = params["features_dc"].data
            colour = (dc * SH_C0 + 0.5) if sh else torch.sigmoid(dc)  # nerfstudio's SH2RGB, or its sigmoid colours
            new = rgb.expand_as(colour) if edit.config.recolor_mode == "replace" else colour * rgb
            new = new[inside]
            dc[inside] = ((new - 0.5) / SH_C0) if sh else torch.logit(new.clamp(1e-4, 1 - 1e-4))
            rest = params["features_rest"].data
            rest[inside] = 0.0 if edit.config.recolor_mode == "replace" else rest[inside] * rgb
        self.edit = edit
        self._mark_grid()

    @torch.no_grad()
    def render_images(self, cameras: Cameras) -> TeacherImages:
        """splatfacto's own renders of ``cameras`` (``SplatfactoModel.get_outputs``, one camera at a time),
        its background taken out again: premultiplied colour and opacity."""
        rgbs, accumulations = [], []
        for i in range(len(cameras)):
            out = self.model.get_outputs(cameras[i : i + 1].to(self.model.device))
            accumulation = out["accumulation"]
            rgbs.append(out["rgb"] - (1.0 - accumulation) * out["background"])
            accumulations.append(accumulation)
        return TeacherImages(torch.stack(rgbs), torch.stack(accumulations))


def _compile_error(error: BaseException) -> str:
    """One line of a failed import or JIT build of a CUDA extension: the first compiler diagnostic (``…: error: …``,
    directories dropped) of torch's "Error building extension" message, else its first line (≤ 200 characters)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    errors = (line for line in lines[1:] if re.search(r"\berror:", line))
    diagnostic = next(errors, None)
    first = re.sub(r":\s*\[\d+/\d+\].*", "", lines[0])  # "Error building extension 'x': [1/6] nvcc …" → its name
    if diagnostic is not None:
        first += ": " + re.sub(r"[^\s(]*/", "", diagnostic.strip())  # "/…/csrc/scan.cu(9): error: …" → "scan.cu(9)…"
    return first[:200]


@functools.lru_cache(maxsize=None)
def _extension_problem(package: str, what: str) -> Optional[str]:
    """Why ``package``'s compiled CUDA extension (``<package>.cuda._backend``: a prebuilt ``<package>.csrc`` or a JIT
    build with nvcc, compiled on its first import) cannot be used, in a phrase; None when it can.
    Importing it compiles it where it was never built (minutes, once per machine; torch caches the build); the answer
    is kept for the process, so a failed build is not retried."""
    module = f"{package}.cuda._backend"
    loaded = sys.modules.get(module)
    if loaded is None:
        if importlib.util.find_spec(f"{package}.csrc") is None and shutil.which("nvcc") is None:
            return f"{package} has no prebuilt CUDA {what} here and no CUDA toolkit (nvcc) to build them"
        try:
            loaded = importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 — a failed build raises RuntimeError, a bad .so OSError/ImportError
            return f"{package}'s CUDA {what} could not be built or loaded ({_compile_error(error)})"
    if getattr(loaded, "_C", None) is None:
        return f"{package} found no CUDA toolkit (nvcc) to build its CUDA {what}"
    return None


def nerfacc_cuda_problem() -> Optional[str]:
    """Why nerfacc's compiled CUDA ops (packed ray marching: instant-ngp's training and rendering) cannot load here, in
    a phrase; None when they can.

    Cheap where it can be: no CUDA device; nerfacc 0.5.2 with torch built for CUDA ≥ 13 and no finished JIT build
    (its ``scan.cu`` uses ``cub::Equality``, which CUDA 13's CUB no longer has, and torch refuses to build with an
    nvcc of another major version than its own, so no build can succeed: issue #29, an H200 with torch 2.11 + CUDA
    13.0). Otherwise the ops are imported, which JIT-compiles them on first use (``nerfacc/cuda/_backend.py``), and a
    failure is reported by its first compiler error."""
    if not torch.cuda.is_available():
        return "nerfacc's CUDA ops need a CUDA device, and this machine has none"
    if "nerfacc.cuda._backend" not in sys.modules and importlib.util.find_spec("nerfacc.csrc") is None:
        from importlib.metadata import version

        from torch.utils.cpp_extension import _get_build_directory

        cuda = torch.version.cuda or ""
        built = Path(_get_build_directory("nerfacc_cuda", verbose=False)) / "nerfacc_cuda.so"
        if version("nerfacc") == "0.5.2" and cuda and int(cuda.split(".")[0]) >= 13 and not built.is_file():
            return (f"nerfacc 0.5.2's CUDA ops do not build with CUDA {cuda} (scan.cu: namespace \"cub\" has no member "
                    "\"Equality\"), and no build of them is cached")
    return _extension_problem("nerfacc", "ops")


def gsplat_cuda_problem() -> Optional[str]:
    """Why gsplat's CUDA kernels (splatfacto's rasteriser) cannot load here, in a phrase; None when they can. gsplat
    compiles them on first use (``gsplat/cuda/_backend.py``, minutes the first time; then cached), so this may take
    that long once; a failed build is reported by its first compiler error."""
    if not torch.cuda.is_available():
        return "gsplat's CUDA kernels need a CUDA device, and this machine has none"
    return _extension_problem("gsplat", "kernels")


def load_splatfacto_teacher(config, state: Dict[str, Tensor], step: int, device: Union[str, torch.device], source: Path,
                            sampling: Optional[Sampling]) -> SplatfactoTeacher:
    """A splatfacto teacher, on CUDA (gsplat renders only there). gsplat's kernels are loaded (compiled on first use)
    before anything else, so a machine where they cannot be gets one line naming gsplat, not a traceback at the
    first render.

    Raises:
        TeacherLoadError: no CUDA device, gsplat's CUDA kernels cannot be built or loaded, no student sampling, or a
            checkpoint that does not match."""
    if sampling is None:
        raise TeacherLoadError("a splatfacto teacher needs the student's sampling settings (Sampling)")
    if torch.device(device).type != "cuda":
        raise TeacherLoadError(
            f"teacher {source} is a splatfacto model: it renders with gsplat, which needs CUDA, and this run is on "
            f"{device}; distil it on a machine with an NVIDIA GPU"
        )
    problem = gsplat_cuda_problem()
    if problem is not None:
        raise TeacherLoadError(f"teacher {source} is a splatfacto model, which renders with gsplat, and {problem}")
    model = build_stock_model(config, state, source, sampling)
    model.step = step  # its SH degree grows with the step; its load_state_dict sets 30000
    return SplatfactoTeacher(model.to(device), source, sampling)


def _check_layout(config, state: Dict[str, Tensor], source: Path) -> None:
    """Match the model's implementation to the checkpoint's layout (tcnn vs torch), or say why not."""
    tcnn_layout = any(k.endswith(".params") for k in state)  # tcnn modules hold one flat "params" tensor
    if tcnn_layout and not TCNN_EXISTS:
        raise TeacherLoadError(
            f"teacher {source} was trained with tiny-cuda-nn (tcnn layout), which is not installed here; its fused "
            "hash-grid and MLP weights have no torch equivalent to convert to. Use it on a machine with tinycudann "
            "(CUDA), or train the teacher with --pipeline.model.implementation torch"
        )
    if hasattr(config.pipeline.model, "implementation"):
        config.pipeline.model.implementation = "tcnn" if tcnn_layout else "torch"


def build_stock_model(config, state: Dict[str, Tensor], source: Path, sampling: Optional[Sampling]) -> Model:
    """A stock nerfstudio model built from its config and filled from ``state``, without its dataset.

    The scene box comes from the field's stored aabb (nerfacto, instant-ngp, tensorf) or from the
    student's (vanilla-nerf); the number of training images (appearance embeddings, camera optimiser)
    from the state's shapes. LPIPS is not downloaded (:func:`~pvdal_ns.utils.library_internals.offline_lpips`).

    Raises:
        TeacherLoadError: tcnn checkpoint without tinycudann, no scene box, or a state that does not match.
    """
    _check_layout(config, state, source)
    aabb = state.get("field.aabb")
    if aabb is None and sampling is None:
        raise TeacherLoadError(f"teacher {source} stores no scene box; load it with the student's (Sampling)")
    scene_box = SceneBox(aabb=aabb.float()) if aabb is not None else sampling.scene_box  # type: ignore[union-attr]
    per_image = [state[k] for k in ("camera_optimizer.pose_adjustment", "field.embedding_appearance.embedding.weight")
                 if k in state]
    num_train_data = per_image[0].shape[0] if per_image else 1
    with offline_lpips():
        model = config.pipeline.model.setup(scene_box=scene_box, num_train_data=num_train_data, metadata={})
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_KEYS)}
    try:
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, KeyError) as err:  # shapes (any family); splatfacto's override indexes its Gaussians
        first = first_line(err)
        raise TeacherLoadError(f"checkpoint of {source} does not match its config.yml ({first})") from None
    if result is None:  # splatfacto's load_state_dict returns nothing; it resizes its Gaussians to the state
        return model
    missing = [k for k in result.missing_keys if not k.startswith(IGNORED_KEYS)]
    if missing or result.unexpected_keys:
        what = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise TeacherLoadError(f"checkpoint of {source} does not match its config.yml ({what})")
    return model


def load_field_teacher(family: str, field: str, config, state: Dict[str, Tensor], step: int,
                       device: Union[str, torch.device], source: Path, sampling: Optional[Sampling]) -> FieldTeacher:
    """A stock model of ``family`` whose ``field`` attribute is queried (the registry binds both), on ``device``
    with its occupancy grid. Only the field is ever called (plain torch ops): an instant-ngp teacher needs none of
    nerfacc's compiled CUDA ops, which its own training and rendering need.

    Raises:
        TeacherLoadError: no student sampling, a tcnn checkpoint without tinycudann, or a mismatch."""
    if sampling is None:
        raise TeacherLoadError(f"a {family} teacher needs the student's sampling settings (Sampling)")
    model = build_stock_model(config, state, source, sampling)
    model.update_to_step(step)
    model = model.to(device)
    return FieldTeacher(model, getattr(model, field), family, source, sampling, proposal_sampler=own_proposals(model))


def own_proposals(model: Model) -> Optional[ProposalSampler]:
    """A nerfacto teacher's own proposal sampling (its ``density_fns``, sample counts, jitter and collider), which
    places the shared samples of a student sampling with proposals; None for a model without proposal fields."""
    if not isinstance(model, NerfactoModel):
        return None
    cfg = model.config
    settings = ProposalSampling(num_proposal_samples_per_ray=tuple(cfg.num_proposal_samples_per_ray),
                                num_samples=cfg.num_nerf_samples_per_ray, single_jitter=cfg.use_single_jitter)
    collider = NearFarCollider(near_plane=cfg.near_plane, far_plane=cfg.far_plane)
    return ProposalSampler(collider, settings, model.density_fns,
                           contracted=cfg.proposal_initial_sampler == "piecewise")
