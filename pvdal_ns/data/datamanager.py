"""``DistillationDataManager``: nerfstudio's datamanager, serving pseudo-label batches when distilling.

Without a teacher it is nerfstudio's ``VanillaDataManager`` (training on images). Distilling, training
batches never contain real pixels (paper §4.1 "pseudo-labeling", data-free): they come from the
pseudo-labels (:mod:`pvdal_ns.data.pseudo_labels`) the pipeline hands it at setup. The eval split keeps the real
images, so ``ns-eval`` measures the student against ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Type

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig

from pvdal_ns.data.pseudo_labels import Batch, PseudoLabels, PseudoLabelsConfig, RenderedLabels

__all__ = ["DistillationDataManager", "DistillationDataManagerConfig", "float32_intrinsics"]


@dataclass
class DistillationDataManagerConfig(VanillaDataManagerConfig, PseudoLabelsConfig):
    """nerfstudio's ``VanillaDataManagerConfig`` and the pseudo-label settings (:class:`PseudoLabelsConfig`)."""

    _target: Type = field(default_factory=lambda: DistillationDataManager)


def float32_intrinsics(dataset):
    """nerfstudio's blender dataparser gives float64 fx/fy (a numpy float into ``torch.tensor``), which
    breaks ``ns-render spiral`` (``torch.cross`` of float32 and float64); cast them to float32."""
    cameras = dataset.cameras
    for name in ("fx", "fy", "cx", "cy"):
        setattr(cameras, name, getattr(cameras, name).float())
    return dataset


class DistillationDataManager(VanillaDataManager):
    """nerfstudio's ``VanillaDataManager``, or, once the pipeline has handed it :class:`PseudoLabels` at
    setup (:meth:`use_pseudo_labels`), their batches. Training images are only read when training from
    images (no teacher) or fine-tuning after distillation.
    """

    config: DistillationDataManagerConfig

    def create_train_dataset(self):
        return float32_intrinsics(super().create_train_dataset())

    def create_eval_dataset(self):
        return float32_intrinsics(super().create_eval_dataset())

    def setup_train(self) -> None:
        # Deferred: VanillaDataManager.setup_train reads every training image, which distillation never uses.
        self.pseudo_labels: Optional[PseudoLabels] = None
        """The batch source when distilling."""
        self.leads = False
        """True when this datamanager's student made its pseudo-labels: its errors feed active learning."""
        self._image_training_ready = False
        self.finetune_from: Optional[int] = None
        """First step that trains on the real images after distilling (``--pipeline.finetune-steps``); None: never."""

    def use_pseudo_labels(self, pseudo_labels: PseudoLabels, leads: bool = True) -> None:
        """Train on ``pseudo_labels`` instead of the images: called once, by the pipeline at setup, right
        after the scene is parsed (the teacher samples in its scene box) and before any batch.

        Args:
            leads: this datamanager's student made them; a student sharing another's (``leads`` False)
                trains on the same batches and its errors are not fed back (hard points stay its own).

        Raises:
            RuntimeError: pseudo-labels were set already."""
        if self.pseudo_labels is not None:
            raise RuntimeError("the pseudo-labels of a datamanager are set once, at setup")
        self.pseudo_labels, self.leads = pseudo_labels, leads

    def get_extra_state(self) -> Dict[str, Any]:
        """What an exact resume needs beyond the pools (docs/design.md, "What a resume restores"): torch's random
        streams at the checkpoint and, for the student that leads rendered pseudo-labels, where their epoch stands."""
        state: Dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        labels = getattr(self, "pseudo_labels", None)
        if isinstance(labels, RenderedLabels) and self.leads:
            state["epoch"] = labels.epoch_state()
        return state

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        labels = getattr(self, "pseudo_labels", None)
        if labels is None:  # evaluation and the viewer: the training stream is not theirs to set
            return
        if isinstance(labels, RenderedLabels) and self.leads and "epoch" in state:
            labels.restore_epoch(state["epoch"])
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

    def next_train(self, step: int) -> Tuple[RayBundle, Batch]:
        """Next batch: real pixels without a teacher or while fine-tuning, otherwise the pseudo-labels' batch of
        ``step`` (:data:`~pvdal_ns.data.pseudo_labels.Batch`)."""
        if self.pseudo_labels is None or (self.finetune_from is not None and step >= self.finetune_from):
            if not self._image_training_ready:
                super().setup_train()
                # nerfstudio sets this up in __init__, before the pipeline's ``datamanager.to(device)`` moves the
                # ray generator's pixel grid (a CPU buffer) to the device; set up here, after it, it is moved here
                # (training from images or fine-tuning on CUDA otherwise indexes a CPU grid with CUDA pixels).
                self.train_ray_generator.to(self.device)
                self._image_training_ready = True
            return super().next_train(step)
        self.train_count += 1
        return self.pseudo_labels.batch(step)

    def get_train_rays_per_batch(self) -> int:
        return self.config.train_num_rays_per_batch
