"""`python -m proxy` is the `genesys-token-proxy` command."""

from proxy.cli import main

raise SystemExit(main())
