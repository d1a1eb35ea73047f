"""``python -m firmware_sim.bus``: the simulator on its own."""

import sys

from firmware_sim.bus.sim import main

sys.exit(main())
