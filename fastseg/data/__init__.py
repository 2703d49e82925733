"""Training batches from preprocessed cases: nnU-Net's patch sampling (`fastseg.data.sampling`) and
its augmentations, on an NVIDIA DALI pipeline on the GPU (`fastseg.data.augment`) and as native passes
on the CPU: the spatial transform and the noise while the patch is read (`fastseg.data.spatial`), the
rest over the batch (`fastseg.data.intensity`); `fastseg.data.loader` puts them together."""

import importlib

_EXPORTS = {
    "make_training_loader": "fastseg.data.loader",
    "TrainingLoader": "fastseg.data.loader",
    "LoaderError": "fastseg.data.loader",
    "PatchSampler": "fastseg.data.sampling",
    "augmentation_setup": "fastseg.data.sampling",
    "AugmentSpec": "fastseg.data.augment",
    "build_augmentation_pipeline": "fastseg.data.augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:  # imported on first use: DALI loads only when batches are made
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastseg.data' has no attribute {name!r}")
