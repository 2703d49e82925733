"""Training batches from preprocessed cases: nnU-Net's patch sampling (`fastseg.data.sampling`) and
its augmentations on an NVIDIA DALI pipeline (`fastseg.data.augment`), on the GPU when there is one
and on DALI's CPU operators when there is not (`fastseg.data.loader`); on the CPU the spatial
transform and the noise run natively while the patch is read (`fastseg.data.spatial`)."""

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
