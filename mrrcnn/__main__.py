"""``python -m mrrcnn`` (and ``torchrun ... -m mrrcnn train ...``): the ``mrrcnn`` command."""

import sys

from .cli import main

sys.exit(main())
