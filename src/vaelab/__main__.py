"""`python -m vaelab` (and `torchrun -m vaelab`) runs the CLI."""

import sys

from vaelab.cli.main import main

sys.exit(main())
