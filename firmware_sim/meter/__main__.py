"""``python -m firmware_sim.meter``: the simulator on its own."""

import sys

from firmware_sim.meter.sim import main

sys.exit(main())
