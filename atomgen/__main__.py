"""``python -m atomgen``: the same command line as the ``atomgen`` console script."""

import sys

from .cli import main

sys.exit(main())
