"""`python -m cirlab ...` is the `cirlab` command (also under `torchrun ... -m cirlab train`)."""

import sys

from cirlab.cli.main import main

sys.exit(main())
