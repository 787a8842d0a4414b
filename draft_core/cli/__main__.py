"""``python -m draft_core.cli``: the same as the ``draft`` command (used by torchrun and accelerate launch)."""

import sys

from draft_core.cli import main

sys.exit(main())
