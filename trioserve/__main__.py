"""``python -m trioserve``: serve a handler class from the command line.

The console script ``trioserve`` runs the same `main`. The logic lives in
`trioserve._cli`; ``python -m trioserve --help`` lists the options.
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]


if __name__ == "__main__":
    sys.exit(main())
