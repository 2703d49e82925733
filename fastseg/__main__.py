"""`python -m fastseg ...`: the `fastseg` command (what `torchrun ... -m fastseg train ...` runs)."""

from fastseg.cli import console

if __name__ == "__main__":
    console()
