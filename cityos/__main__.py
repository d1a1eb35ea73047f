import sys

from cityos.cli import main

sys.exit(main())
