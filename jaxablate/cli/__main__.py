"""`python -m jaxablate.cli study ...`, the same as the `jaxablate` command."""

from jaxablate.cli.command import main

raise SystemExit(main())
