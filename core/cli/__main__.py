"""``python -m core.cli``: the ``weightatlas`` command (also under ``torchrun -m core.cli``)."""

import sys

from core.cli.main import main

sys.exit(main())
