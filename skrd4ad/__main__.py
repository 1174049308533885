"""``python -m skrd4ad`` = the ``skrd4ad`` command."""

import sys

from .cli import main

sys.exit(main())
