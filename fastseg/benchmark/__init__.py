"""fastseg beside nnU-Net on the user's own data: each tool run as a user runs it, measured the same
way (`measure`), outputs compared; `predict` for prediction (`fastseg benchmark predict`)."""
