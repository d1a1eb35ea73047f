"""``python -m firmware_sim.forest``: the simulator on its own."""

import sys

from firmware_sim.forest.sim import main

sys.exit(main())
