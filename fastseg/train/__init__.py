"""Training with nnU-Net's recipe on fastseg's data pipeline (`fastseg train`): networks from the
plans, nnU-Net's losses and schedule, checkpoints and model folders in nnU-Net's format."""
