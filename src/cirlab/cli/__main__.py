import sys

from cirlab.cli.main import main

sys.exit(main())
