"""`python -m jaxablate`: the single-head ranking of the bundled model (`jaxablate.cli.rank`)."""

from jaxablate.cli.rank import main

raise SystemExit(main())
