"""``python -m firmware_sim.truck``: the simulator on its own."""

import sys

from firmware_sim.truck.sim import main

sys.exit(main())
