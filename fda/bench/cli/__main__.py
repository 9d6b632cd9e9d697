"""``python -m fda.bench.cli``: the same as the ``fda-bench`` script."""

import sys

from fda.bench.cli import main

sys.exit(main())
