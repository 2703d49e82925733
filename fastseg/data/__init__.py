"""Training batches from preprocessed cases: nnU-Net's patch sampling (`fastseg.data.sampling`) and
its augmentations on an NVIDIA DALI pipeline (`fastseg.data.augment`), on the GPU when there is one
and on DALI's CPU operators when there is not (`fastseg.data.loader`)."""
