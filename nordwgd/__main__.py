"""``python -m nordwgd`` runs the daemon."""

from nordwgd.daemon import main

raise SystemExit(main())
