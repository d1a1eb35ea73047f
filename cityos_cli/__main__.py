import sys

from cityos_cli.cli import main

sys.exit(main())
