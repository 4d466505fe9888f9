"""``python -m robustkernels``: the same as the ``robustkernels`` command."""

import sys

from .cli import main

sys.exit(main())
