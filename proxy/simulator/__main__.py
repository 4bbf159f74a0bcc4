"""`python -m proxy.simulator` runs the simulator standalone."""

from proxy.simulator.cli import main

raise SystemExit(main())
