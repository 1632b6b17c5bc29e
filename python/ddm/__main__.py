"""`python -m ddm ...` is the `ddm` command line."""

from __future__ import annotations

import sys

from ddm.cli import main

if __name__ == "__main__":
    sys.exit(main())
