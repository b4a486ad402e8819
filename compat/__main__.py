"""``python -m compat``: see `compat.run`."""

import sys

from compat.run import main

sys.exit(main())
