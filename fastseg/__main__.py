"""`python -m fastseg ...`: the `fastseg` command (what `torchrun ... -m fastseg train ...` runs)."""

import sys

from fastseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
