"""Benchmark (issue #34): the worked example and its numbers. Erase the embedded lego's bucket, convert the edited VM
teacher into an MLP and a hash grid, and the same pairs without the edit; then a chain (erase in a tensors run's
voxels → recolour while converting to VM → MLP) against the one-step conversion with both edits.

    .venv/bin/python benchmarks/editing.py [--teacher <a pvdal-vm config.yml>] [--output-dir outputs/bench-editing]
        [--steps hash 700 mlp 2400 tensors 400 vm 500]

Default teacher: the demo's (``outputs/demo/teacher-vm-small-*.json``; run ``ns-distill demo`` first). Prints, and
writes to ``results.json``:

- **erased pixels**: of the test views' pixels whose (unedited) teacher surface lies in the bucket's box, the share
  whose student shows the background or a surface beyond the box's far side (target ≥ 95 %);
- **PSNR against the teacher's renders**, edited pair against the edited teacher, plain pair against the teacher, on
  every pixel and on the pixels whose rays miss the box (target: within 0.3 dB);
- **the chain's MLP** and the one-step MLP against the teacher edited with both edits (target: within 1 dB);
- **a composed scene**: the teacher with a second copy of itself parked beside it (``--compose <teacher> --offset
  1.15 0 -0.2 --scale 0.4``) into an MLP and a hash grid, against the composed teacher's renders (target: within
  1 dB of the plain pair against the teacher); split by whether a ray crosses the copy's box, and beside it the same
  composed scene with the copy erased (the lego alone in the grown box) and with the lego erased (the copy alone),
  each pair against its own teacher, so that each object's share of the gap shows.

Also ``worked_example.png``: a test view of the teacher, the edited teacher and the edited students. The PSNRs are
figures whatever else runs on the machine; the seconds are not printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

import torch

BUCKET = (-0.8, -1.3, -0.25, 0.8, -0.55, 1.2)
"""The bucket of the embedded lego in the viewer's world frame (found with ``ns-distill edit --preview``)."""
CAB = (-0.8, -0.5, 0.2, 0.8, 1.5, 1.5, 0.15, 0.35, 0.9)
"""The chain's recolour: the upper body blue."""
PARKED = dict(offset=(1.15, 0.0, -0.2), scale=0.4)
"""The composed scene: a second copy of the teacher at 0.4 × its size, parked beside the lego on the same ground."""
ALONE = {"lego alone": (0.8, -0.6, -0.5, 1.75, 0.6, 0.45), "copy alone": (-1.5, -1.5, -1.5, 0.75, 1.5, 1.5)}
"""Erase boxes that leave one object of the composed scene: the copy's (x ≥ 0.8; the lego's occupied cells end at
x = 0.70) and everything up to x = 0.75 (the copy's begin at x = 0.88)."""


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    err = ((a - b) ** 2).mean(-1)
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(-10 * torch.log10(mse.clamp_min(1e-10)))


def _exit_distance(box, origins: torch.Tensor, directions: torch.Tensor) -> tuple:
    """Per ray: whether it crosses the oriented ``box`` and the distance along it where it leaves (slab test)."""
    R, T, S = box.R.float(), box.T.float(), box.S.float()
    o, d = (origins - T) @ R, directions @ R
    d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1, t2 = (-S / 2 - o) / d, (S / 2 - o) / d
    near, far = torch.minimum(t1, t2).amax(-1), torch.maximum(t1, t2).amin(-1)
    return (far > near.clamp_min(0)), far


def _views(cameras) -> List:
    return [cameras[i : i + 1] for i in range(len(cameras))]


@torch.no_grad()
def teacher_views(teacher, cameras) -> List[Dict[str, torch.Tensor]]:
    out = []
    for camera in _views(cameras):
        rays = camera.generate_rays(camera_indices=0).flatten()
        r = teacher.render_rays(rays)
        out.append({"rgb": r["rgb"] + 1.0 - r["accumulation"], "acc": r["accumulation"][:, 0],
                    "depth": r["depth"][:, 0], "origins": rays.origins, "directions": rays.directions})
    return out


@torch.no_grad()
def student_views(config_path: Path, cameras) -> List[Dict[str, torch.Tensor]]:
    from pvdal_ns.utils.run_config import open_run

    _, pipeline, _, _ = open_run(config_path, "student")
    out = []
    for camera in _views(cameras):
        o = pipeline.model.get_outputs_for_camera(camera)
        out.append({"rgb": o["rgb"].reshape(-1, 3), "acc": o["accumulation"].reshape(-1),
                    "depth": o["depth"].reshape(-1)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench-editing"))
    parser.add_argument("--steps", nargs="*", default=["hash", "700", "mlp", "2400", "tensors", "400", "vm", "500"])
    args = parser.parse_args()

    from nerfstudio.data.scene_box import OrientedBox

    from pvdal_ns import EMBEDDED_SCENE
    from pvdal_ns.experiments.convert import convert
    from pvdal_ns.experiments.edit import edit_tensors_run
    from pvdal_ns.experiments.report import pyplot
    from pvdal_ns.teachers import load_teacher
    from pvdal_ns.teachers.composed import open_edited_teacher
    from pvdal_ns.teachers.edits import SceneEdit
    from pvdal_ns.utils.edit_config import SceneEditConfig
    from pvdal_ns.utils.files import save_figure

    steps = {a: int(n) for a, n in zip(args.steps[::2], args.steps[1::2])}
    out = args.output_dir.resolve()
    teacher_path = args.teacher
    if teacher_path is None:
        record = sorted(Path("outputs/demo").glob("teacher-vm-small-*.json"))
        assert record, "no demo teacher: run ns-distill demo first, or pass --teacher"
        teacher_path = Path(json.loads(record[-1].read_text())["config"])
    teacher_path = teacher_path.resolve()
    data = EMBEDDED_SCENE
    erase = SceneEditConfig(erase=[BUCKET])
    both = SceneEditConfig(erase=[BUCKET], recolor=[CAB])

    def students(edit, names, where, source=teacher_path) -> Dict[str, Path]:
        trained = convert(source, names, "small", data, out / where, {a: steps[a] for a in names},
                          f"{where}", together=True, edit=edit, resume=True)  # a rerun reuses finished runs
        return {name: Path(t.report.config) for name, t in zip(names, trained)}

    edited = students(erase, ["mlp", "hash"], "edited")
    plain = students(None, ["mlp", "hash"], "plain")
    tensors = students(None, ["tensors"], "chain-tensors")["tensors"]
    written = sorted((out / "chain-tensors-edited").rglob("config.yml"))
    tensors_edited = written[-1] if written else edit_tensors_run(tensors, erase, out / "chain-tensors-edited")
    vm = students(SceneEditConfig(recolor=[CAB]), ["vm"], "chain-vm", source=tensors_edited)["vm"]
    chain_mlp = students(None, ["mlp"], "chain-mlp", source=vm)["mlp"]
    one_step = students(both, ["mlp"], "one-step")["mlp"]
    composed_edit = SceneEditConfig(compose=teacher_path, **PARKED)
    composed = students(composed_edit, ["mlp", "hash"], "composed")
    alone = {what: students(SceneEditConfig(compose=teacher_path, erase=[box], **PARKED), ["mlp", "hash"],
                            "composed-" + what.replace(" ", "-")) for what, box in ALONE.items()}

    # the test views, rendered by the teacher unedited, erased, and with both edits
    teacher = load_teacher(teacher_path)
    from pvdal_ns.utils.run_config import open_run

    _, pipeline, _, _ = open_run(edited["mlp"], "student")
    cameras = pipeline.datamanager.eval_dataset.cameras  # open_run sets up in test mode: the test views
    plain_views = teacher_views(teacher, cameras)
    erased_teacher = load_teacher(teacher_path)
    erased_teacher.apply_edit(SceneEdit(erase))
    erased_views = teacher_views(erased_teacher, cameras)
    both_teacher = load_teacher(teacher_path)
    both_teacher.apply_edit(SceneEdit(both))
    both_views = teacher_views(both_teacher, cameras)
    erase_edit = SceneEdit(erase)
    box = erase_edit.erase[0]
    rendered: Dict[Path, List[Dict[str, torch.Tensor]]] = {}

    def views(path: Path) -> List[Dict[str, torch.Tensor]]:
        """A student's renders of the test views, made once per run."""
        if path not in rendered:
            rendered[path] = student_views(path, cameras)
        return rendered[path]

    results: Dict[str, dict] = {}
    for name in ("mlp", "hash"):
        ev, pv = views(edited[name]), views(plain[name])
        shown, total = 0, 0
        psnr_e, psnr_p, miss_e, miss_p = [], [], [], []
        for t, te, s_e, s_p in zip(plain_views, erased_views, ev, pv):
            crosses, far = _exit_distance(box, t["origins"], t["directions"])
            surface = t["origins"] + t["directions"] * t["depth"][:, None]
            in_box = (t["acc"] > 0.5) & erase_edit.emptied(surface)
            beyond = (s_e["acc"] < 0.5) | (s_e["depth"] > far)
            shown += int((in_box & beyond).sum())
            total += int(in_box.sum())
            psnr_e.append(_psnr(s_e["rgb"], te["rgb"]))
            psnr_p.append(_psnr(s_p["rgb"], t["rgb"]))
            miss_e.append(_psnr(s_e["rgb"], te["rgb"], ~crosses))
            miss_p.append(_psnr(s_p["rgb"], t["rgb"], ~crosses))
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        results[name] = {"erased_pixels": total, "erased_pixels_shown_beyond": shown / max(total, 1),
                         "psnr_edited_vs_edited_teacher": mean(psnr_e), "psnr_plain_vs_teacher": mean(psnr_p),
                         "psnr_outside_box_edited": mean(miss_e), "psnr_outside_box_plain": mean(miss_p)}
    for name, path in (("chain mlp", chain_mlp), ("one-step mlp", one_step)):
        sv = views(path)
        results[name] = {"psnr_vs_teacher_with_both_edits": sum(_psnr(s["rgb"], t["rgb"]) for s, t in
                                                                zip(sv, both_views)) / len(sv)}
    # the chain's own edited teacher: the voxel-edited tensors run, recoloured as its VM student learnt it
    chain_teacher = load_teacher(tensors_edited)
    chain_teacher.apply_edit(SceneEdit(SceneEditConfig(recolor=[CAB])))
    chain_views = teacher_views(chain_teacher, cameras)
    sv = views(chain_mlp)
    results["chain mlp"]["psnr_vs_its_edited_teacher"] = sum(_psnr(s["rgb"], t["rgb"]) for s, t in
                                                             zip(sv, chain_views)) / len(sv)
    results["one-step mlp"]["psnr_vs_its_edited_teacher"] = results["one-step mlp"]["psnr_vs_teacher_with_both_edits"]
    composed_teacher = open_edited_teacher(teacher_path, composed_edit, "cpu")
    composed_views = teacher_views(composed_teacher, cameras)
    aabb = composed_teacher.second_box.cpu()
    copy_box = OrientedBox(R=torch.eye(3), T=aabb.mean(0), S=aabb[1] - aabb[0])

    def split(runs: Dict[str, Path], target: List[Dict[str, torch.Tensor]], name: str) -> Dict[str, float]:
        """A student's PSNR against ``target`` on every ray, the rays through the copy's box, the rays missing it."""
        sv, mean = views(runs[name]), lambda v: sum(v) / len(v)  # noqa: E731
        through = [_exit_distance(copy_box, t["origins"], t["directions"])[0] for t in target]
        return {"all": mean([_psnr(s["rgb"], t["rgb"]) for s, t in zip(sv, target)]),
                "through_copy_box": mean([_psnr(s["rgb"], t["rgb"], m) for s, t, m in zip(sv, target, through)]),
                "missing_copy_box": mean([_psnr(s["rgb"], t["rgb"], ~m) for s, t, m in zip(sv, target, through)])}

    alone_views = {what: teacher_views(open_edited_teacher(teacher_path, SceneEditConfig(
        compose=teacher_path, erase=[box], **PARKED), "cpu"), cameras) for what, box in ALONE.items()}
    for name in ("mlp", "hash"):
        results[f"composed {name}"] = {
            "psnr_vs_composed_teacher": split(composed, composed_views, name)["all"],
            "psnr_plain_vs_teacher": results[name]["psnr_plain_vs_teacher"],
            "composed": split(composed, composed_views, name), "plain": split(plain, plain_views, name),
            **{what: split(alone[what], alone_views[what], name) for what in ALONE}}
    results["runs"] = {"edited": {k: str(v) for k, v in edited.items()}, "plain": {k: str(v) for k, v in plain.items()},
                       "chain": [str(tensors), str(tensors_edited), str(vm), str(chain_mlp)],
                       "one_step": str(one_step), "composed": {k: str(v) for k, v in composed.items()},
                       **{what: {k: str(v) for k, v in runs.items()} for what, runs in alone.items()},
                       "teacher": str(teacher_path), "steps": steps}
    (out / "results.json").write_text(json.dumps(results, indent=2))

    view = 1  # a top view: the bucket and the parked copy both show
    h, w = int(cameras.height[view]), int(cameras.width[view])
    panels = [("teacher", plain_views[view]["rgb"]), ("edited teacher", erased_views[view]["rgb"])]
    panels += [(f"{n} (edited)", views(edited[n])[view]["rgb"]) for n in ("mlp", "hash")]
    panels += [("chain → mlp", views(chain_mlp)[view]["rgb"])]
    panels += [("composed teacher", composed_views[view]["rgb"]),
               ("composed → hash", views(composed["hash"])[view]["rgb"])]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img.reshape(h, w, 3).clamp(0, 1).numpy())
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    save_figure(out / "worked_example.png", fig)

    for name in ("mlp", "hash"):
        r = results[name]
        print(f"{name}: erased pixels shown beyond the box {r['erased_pixels_shown_beyond']:.1%} of "
              f"{r['erased_pixels']}; PSNR vs teacher renders edited {r['psnr_edited_vs_edited_teacher']:.2f} / plain "
              f"{r['psnr_plain_vs_teacher']:.2f} dB; rays missing the box {r['psnr_outside_box_edited']:.2f} / "
              f"{r['psnr_outside_box_plain']:.2f} dB")
    print(f"chain (tensors erase → vm recolour → mlp): {results['chain mlp']['psnr_vs_its_edited_teacher']:.2f} dB "
          f"against its edited teacher (the voxel-edited tensors run, recoloured), "
          f"{results['chain mlp']['psnr_vs_teacher_with_both_edits']:.2f} against the teacher with both edits made "
          f"at points; one step: {results['one-step mlp']['psnr_vs_teacher_with_both_edits']:.2f} dB against it")
    for name in ("mlp", "hash"):
        r = results[f"composed {name}"]
        print(f"composed {name}: {r['psnr_vs_composed_teacher']:.2f} dB against the composed teacher's renders "
              f"(the plain {name} against the teacher: {r['psnr_plain_vs_teacher']:.2f})")
        for what in ("composed", "plain", *ALONE):
            print(f"    {what:10s} all {r[what]['all']:.2f}, rays through the copy's box "
                  f"{r[what]['through_copy_box']:.2f}, missing it {r[what]['missing_copy_box']:.2f} dB")
    print(f"wrote {out / 'results.json'} and {out / 'worked_example.png'}")


if __name__ == "__main__":
    main()
