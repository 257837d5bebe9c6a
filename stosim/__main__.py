"""``python -m stosim`` runs the command-line interface."""

from stosim.cli import main

raise SystemExit(main())
