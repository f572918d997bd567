"""``python -m asyncconsumer``: the command line (see ``asyncconsumer.cli``)."""

from .cli import main

raise SystemExit(main())
