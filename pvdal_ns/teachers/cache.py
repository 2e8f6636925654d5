"""Teacher cache: the serial mode of PVD-AL (paper §5, "Limitations": when teacher and student do not fit
in memory together, let the teacher generate the data first, then distil the student).

A run's pseudo-label batches are rendered once by the live teacher and written to a folder; the student
then distils from the memory-mapped files with no teacher in memory: the cache is a :class:`Teacher` of
recorded batches. Only the teacher's field outputs at the occupied sample points are stored (the render is
recomposited on each step's random background with the same
:meth:`~pvdal_ns.model_components.sampling.PackedSamples.composite` the live teacher uses):

- ``rays.f32``     [B·R, 7] float32: origin, direction, pixel area of every ray;
- ``masks.u8``     [B, ⌈R·S/8⌉] bits: which of the S samples of a ray are occupied (and seen);
- ``spans.f32``    [N, 2] float32: start and end (scene units) of the N occupied samples;
- ``outputs.f16``  [N, 4 + F] float16: raw density, colour and (F = 16 where it exists) ϕ¹;
- ``index.i64``    [B + 1] int64: first sample of each batch; ``occupancy.pt`` the teacher's grid;
  ``field.pt`` a pvdal-* teacher's field weights (for the students' warm start);
- ``meta.json``    what the cache was written for (teacher, sampling, rays, poses), checked on reuse.

A cache is written into ``<path>.partial-<host>-<pid>`` and renamed when complete, so an interrupted
write leaves nothing that looks usable; what a killed writer left is removed by the next write to that
path. Its size is bounded (``max_bytes``); a run with more steps than cached batches cycles through them.
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.model_components.renderers import RGBRenderer
from torch import Tensor

from pvdal_ns.field_components.scene_space import SceneSpace
from pvdal_ns.fields import PointOutputs
from pvdal_ns.model_components.occupancy import OccupancyGrid
from pvdal_ns.model_components.sampling import PackedSamples
from pvdal_ns.model_components.teacher_batch import Capability, TeacherBatch, points_batch
from pvdal_ns.teachers.base import Teacher
from pvdal_ns.utils.errors import BadInputError, PVDError, StorageError, TeacherLoadError, first_line
from pvdal_ns.utils.files import exclusive, read_record, save_torch

CACHE_VERSION = 1
_FILES = {"rays": "rays.f32", "masks": "masks.u8", "spans": "spans.f32", "outputs": "outputs.f16"}
"""The per-sample and per-ray files of a cache, by what they hold (layout in the module docstring)."""


class _Mapped:
    """Rows of one binary file, memory-mapped read-only. After each read the whole mapping is released
    from this process (the pages stay in the OS page cache), so resident memory holds one batch, not the
    whole cache. The whole mapping, not the read's range: the kernel maps neighbouring pages on a fault
    (fault-around), and releasing only the range read left those resident, ~70 % of all pages read."""

    def __init__(self, path: Path, dtype, width: int) -> None:
        self.dtype, self.width = np.dtype(dtype), width
        self.row_bytes = self.dtype.itemsize * width
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def rows(self, start: int, stop: int) -> np.ndarray:
        if stop <= start or self._map is None:
            return np.zeros((0, self.width), self.dtype)
        offset, length = start * self.row_bytes, (stop - start) * self.row_bytes
        view = np.frombuffer(self._map, self.dtype, count=length // self.dtype.itemsize, offset=offset)
        rows = view.reshape(-1, self.width).copy()
        del view
        self._map.madvise(mmap.MADV_DONTNEED)  # a few µs: only mapped pages are visited
        return rows


def _check_sizes(path: Path, meta: Dict[str, Any], index: np.ndarray) -> None:
    """Raise ValueError when a file of the cache at ``path`` is not the size its ``meta`` and ``index`` give (a cache
    cut short or altered after it was written)."""
    batches, points = int(meta["batches"]), int(index[-1]) if len(index) else -1
    expected = {"rays": batches * int(meta["rays_per_batch"]) * 7 * 4, "masks": batches * int(meta["mask_bytes"]),
                "spans": points * 2 * 4, "outputs": points * int(meta["output_width"]) * 2}
    if len(index) != batches + 1:
        raise ValueError(f"index.i64 lists {len(index) - 1} batches, meta.json {batches}")
    for key, size in expected.items():
        actual = (path / _FILES[key]).stat().st_size
        if actual != size:
            raise ValueError(f"{_FILES[key]} has {actual} bytes, not {size}")


class TeacherCache(Teacher):
    """A finished cache, opened for reading: a teacher of recorded batches (``RECORDED``, ``POINTS`` and, when
    the cached teacher had one, ``VOLUME_FEATURE``). It has the teacher's occupancy grid, ``name`` and
    ``source``, and :meth:`recorded_batch` gives what :meth:`Teacher.render` gave for the cached rays.

    Args:
        path: the cache folder (as written by :func:`write_cache`).
        expected: the reading run's :func:`~pvdal_ns.pipelines.sharing.batch_key`; entries that are None (e.g. no
            teacher config given) are not compared. None: no check.

    Raises:
        TeacherLoadError: ``path`` is not a complete cache of this version, or (with ``expected``) was
            written for another teacher, scene or sampling.
    """

    def __init__(self, path: Path, expected: Optional[Dict] = None) -> None:
        meta_path = Path(path) / "meta.json"
        if not meta_path.is_file():
            raise TeacherLoadError(f"teacher cache {path} exists but is not a finished pvdal teacher cache "
                                   "(no meta.json): delete it or choose another --teacher-cache path")
        meta = read_record(meta_path, {}, "delete the cache to write a new one", error=TeacherLoadError)
        if meta.get("version") != CACHE_VERSION:
            raise TeacherLoadError(f"teacher cache {path} has format version {meta.get('version')}, this pvdal-ns "
                                   f"reads version {CACHE_VERSION}: delete it to write a new one")
        try:  # every field of meta.json and every file read here: a damaged cache gets one line, whatever is damaged
            self._open(Path(path), meta, expected)
        except PVDError:
            raise
        except Exception as error:  # noqa: BLE001
            raise TeacherLoadError(f"teacher cache {path} is damaged ({first_line(error)}): delete it to write a new "
                                   "one") from None

    def _open(self, path: Path, meta: Dict[str, Any], expected: Optional[Dict]) -> None:
        """Read a cache whose meta.json is of this version (any error: a damaged cache, told by the caller)."""
        if expected is not None:
            keys = [k for k, v in expected.items() if v is not None and meta["written_for"].get(k) != v]
            if keys:
                raise TeacherLoadError(f"teacher cache {path} was written for another run (differs in "
                                       f"{', '.join(keys)}): delete it or choose another --teacher-cache path")
        self.path, self.meta = path, meta
        self.source = Path(meta["written_for"]["teacher"])
        self._name = f"cache of {meta['teacher_name']}"
        self.capabilities = Capability.RECORDED | Capability.POINTS
        if meta["has_volume_feature"]:
            self.capabilities |= Capability.VOLUME_FEATURE
        self.num_samples, self.rays_per_batch = int(meta["num_samples"]), int(meta["rays_per_batch"])
        self.index = np.fromfile(self.path / "index.i64", dtype=np.int64)
        _check_sizes(self.path, meta, self.index)
        grid_state = torch.load(self.path / "occupancy.pt", map_location="cpu", weights_only=True)
        aabb = torch.tensor(meta["written_for"]["scene_box"], dtype=torch.float32).view(2, 3)
        space = SceneSpace(aabb, bool(meta["written_for"].get("contracted", False)))
        self.occupancy_grid = OccupancyGrid(space, int(meta["written_for"]["grid_resolution"]))
        self.occupancy_grid.load_state_dict(grid_state)
        grid_box = self.occupancy_grid.space.aabb.detach().cpu()
        if not torch.allclose(grid_box, aabb):  # written by a composed teacher: its student's box grows as it did
            self.scene_box = SceneBox(aabb=grid_box.clone())
        self._rays = _Mapped(self.path / _FILES["rays"], np.float32, 7)
        self._spans = _Mapped(self.path / _FILES["spans"], np.float32, 2)
        self._outputs = _Mapped(self.path / _FILES["outputs"], np.float16, int(meta["output_width"]))
        self._masks = _Mapped(self.path / _FILES["masks"], np.uint8, int(meta["mask_bytes"]))
        self.renderer_rgb = RGBRenderer(background_color="white")

    @property
    def name(self) -> str:
        return self._name

    def warm_start_state(self) -> Optional[Dict[str, Tensor]]:
        """The recorded teacher's field weights (``field.pt``, written for pvdal-* teachers), or None.

        Raises:
            TeacherLoadError: ``field.pt`` is damaged (not a dict of tensors)."""
        path = self.path / "field.pt"
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
                raise ValueError("not a dict of tensors")
            if "aabb" in state and tuple(state["aabb"].shape) != (2, 3):
                raise ValueError(f"its aabb is of shape {tuple(state['aabb'].shape)}, not (2, 3)")
        except Exception as error:  # noqa: BLE001 — whatever is damaged, one line
            raise TeacherLoadError(f"teacher cache {self.path} is damaged (field.pt: {first_line(error)}): delete it "
                                   "to write a new one") from None
        return state

    def __len__(self) -> int:
        """Number of cached batches."""
        return len(self.index) - 1

    @property
    def nbytes(self) -> int:
        """Size of the cache on disk (bytes)."""
        return cache_nbytes(self.path)

    def recorded_batch(self, index: int, background: Float[Tensor, "R 3"],
                       device: torch.device, stage: int = 3) -> Tuple[RayBundle, TeacherBatch]:
        """Cached batch ``index`` (0 ≤ index < len), rendered on ``background`` (the R rays' background colours)
        from stage 3 on.

        Returns:
            The R rays (nears/fars unset) and the teacher's view of them, as :meth:`Teacher.render`
            returns it for ``stage``; field outputs are float16-rounded.
        """
        i, r = index, self.rays_per_batch
        # the samples are packed on the CPU, where the files are read, and then moved: no step waits for a count
        rays = torch.from_numpy(self._rays.rows(i * r, (i + 1) * r))
        bits = np.unpackbits(self._masks.rows(i, i + 1)[0])[: r * self.num_samples]
        mask = torch.from_numpy(bits.astype(bool)).view(r, self.num_samples)
        start, stop = int(self.index[i]), int(self.index[i + 1])
        spans = torch.from_numpy(self._spans.rows(start, stop))
        out = torch.from_numpy(self._outputs.rows(start, stop)).to(device=device, dtype=torch.float32)
        bundle = RayBundle(origins=rays[:, :3], directions=rays[:, 3:6], pixel_area=rays[:, 6:7],
                           camera_indices=torch.zeros(r, 1, dtype=torch.long))
        starts = torch.zeros(r, self.num_samples, 1)
        ends = torch.zeros_like(starts)
        starts[mask], ends[mask] = spans[:, :1], spans[:, 1:]
        samples = PackedSamples.pack(bundle.get_ray_samples(bin_starts=starts, bin_ends=ends), mask).to(device)
        bundle = bundle.to(device)
        phi1 = out[:, 4:] if Capability.VOLUME_FEATURE in self.capabilities else None
        points = PointOutputs(raw_density=out[:, :1], rgb=out[:, 1:4], phi1=phi1)
        return bundle, points_batch(samples, points, background, stage, self.renderer_rgb)


def cache_nbytes(path: Path) -> int:
    """Size on disk (bytes) of the cache folder at ``path``."""
    return sum(f.stat().st_size for f in Path(path).iterdir())


def batch_nbytes(num_rays: int, num_samples: int, num_points: int, output_width: int) -> int:
    """Bytes one cached batch takes: rays, occupancy bits, spans and float16 outputs."""
    return num_rays * 28 + -(-num_rays * num_samples // 8) + num_points * (8 + 2 * output_width)


def _partial_path(path: Path, pid: int | str = "") -> Path:
    """Where process ``pid`` of this host writes the cache ``path`` before renaming it ("": the prefix)."""
    return path.with_name(f"{path.name}.partial-{socket.gethostname()}-{pid}")


def _remove_abandoned_partials(path: Path) -> None:
    """Delete the unfinished writes of ``path`` whose writer (a process of this host) no longer runs: a
    killed run cannot clean up after itself. Writes of live processes or of other hosts are left alone."""
    prefix = _partial_path(path).name
    for partial in path.parent.glob(glob.escape(prefix) + "*"):
        pid = partial.name[len(prefix):]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def write_cache(path: Path, teacher: Teacher, batches: Iterable[Tuple[RayBundle, Dict]], written_for: Dict,
                max_bytes: int, progress: Optional[Callable[[], None]] = None) -> TeacherCache:
    """Write the teacher's pseudo-label ``batches``
    (from :meth:`pvdal_ns.data.pseudo_labels.RenderedLabels.render_batches`) to a new cache at ``path`` and open
    it. Stops before the batch that would pass ``max_bytes``.

    Args:
        path: the cache folder; must not exist yet.
        teacher: the live teacher (its occupancy grid, name and capabilities are stored).
        batches: (RayBundle [R], batch dict with ``teacher`` :class:`TeacherBatch`) pairs.
        written_for: what the cache is for (teacher, sampling, rays per batch, poses; see ``meta.json``).
        max_bytes: bound on the cache size (bytes).
        progress: called with no argument after each batch (a progress-bar advance), or None.

    Raises:
        BadInputError: ``path`` already exists, another process is writing it (an ``fcntl`` lock on
            ``.<name>.lock`` beside it: never two writers, and a writer never removes a live one's partial folder), or
            ``max_bytes`` is smaller than one batch.
        StorageError: the disk is full (nothing of the cache is kept).
    """
    path = Path(path)
    with exclusive(path.parent / f".{path.name}.lock", f"the teacher cache {path}"):
        return _write_cache(path, teacher, batches, written_for, max_bytes, progress)


def _write_cache(path: Path, teacher: Teacher, batches: Iterable[Tuple[RayBundle, Dict]], written_for: Dict,
                 max_bytes: int, progress: Optional[Callable[[], None]]) -> TeacherCache:
    """:func:`write_cache`, its lock held."""
    if path.exists():
        raise BadInputError(f"teacher cache {path} already exists: delete it or choose another path")
    _remove_abandoned_partials(path)
    partial = _partial_path(path, os.getpid())
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    files = {key: open(partial / name, "wb") for key, name in _FILES.items()}
    index, total, num_rays, num_samples = [0], 0, 0, 0
    has_volume_feature = Capability.VOLUME_FEATURE in teacher.capabilities
    output_width = 4 + (16 if has_volume_feature else 0)
    try:
        for ray_bundle, batch in batches:
            tb: TeacherBatch = batch["teacher"]
            samples, p = tb.samples, tb.points
            mask = samples.dense_mask()
            valid = samples.valid
            num_rays, num_samples = mask.shape
            size = batch_nbytes(num_rays, num_samples, int(valid.sum()), output_width)
            if total + size > max_bytes:
                if len(index) == 1:
                    raise BadInputError(f"the teacher cache bound ({max_bytes / 2**30:.2f} GiB) is smaller than one "
                                           f"batch ({size / 2**20:.1f} MiB): raise --teacher-cache-gib")
                break
            rays = torch.cat([ray_bundle.origins, ray_bundle.directions, ray_bundle.pixel_area], dim=-1)
            files["rays"].write(rays.float().cpu().numpy().tobytes())
            files["masks"].write(np.packbits(mask.cpu().numpy().ravel()).tobytes())
            frustums = samples.ray_samples.frustums
            spans = torch.cat([frustums.starts, frustums.ends], -1)[valid]
            files["spans"].write(spans.float().cpu().numpy().tobytes())
            fields = [p.raw_density, p.rgb] + ([p.phi1] if has_volume_feature else [])
            files["outputs"].write(torch.cat(fields, -1)[valid].to(torch.float16).cpu().numpy().tobytes())
            index.append(index[-1] + len(spans))
            total += size
            if progress is not None:
                progress()
        for f in files.values():
            f.close()
        np.asarray(index, dtype=np.int64).tofile(partial / "index.i64")
        save_torch(teacher.occupancy_grid.state_dict(), partial / "occupancy.pt")
        field_state = teacher.warm_start_state()
        if field_state is not None:  # students reading the cache warm-start as the one writing it
            save_torch({k: v.cpu() for k, v in field_state.items()}, partial / "field.pt")
        meta = {"version": CACHE_VERSION, "written_for": written_for, "teacher_name": teacher.name,
                "has_volume_feature": has_volume_feature, "num_samples": num_samples,
                "rays_per_batch": num_rays, "output_width": output_width,
                "mask_bytes": -(-num_rays * num_samples // 8), "batches": len(index) - 1}
        (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        partial.rename(path)
    except OSError as error:  # a full disk: one line, nothing of the cache left
        _discard(files, partial)
        raise StorageError(f"teacher cache {path} could not be written after {total / 2**20:.0f} MiB "
                               f"({error.strerror or error}): nothing of it is kept; free space or lower "
                               "--teacher-cache-gib") from None
    except BaseException:
        _discard(files, partial)
        raise
    return TeacherCache(path)


def _discard(files: Dict[str, Any], partial: Path) -> None:
    """Close the files of a cache being written and remove its partial folder (closing may fail on a full disk)."""
    for f in files.values():
        try:
            f.close()
        except OSError:
            pass
    shutil.rmtree(partial, ignore_errors=True)
