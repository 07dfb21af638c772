"""``python -m transformer_toolkit`` is the ``ttk`` command."""

import sys

from .cli import main

sys.exit(main())
