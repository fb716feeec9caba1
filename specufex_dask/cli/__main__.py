"""``python -m specufex_dask.cli``: the ``specufex-dask`` command line."""

from specufex_dask.cli import main

raise SystemExit(main())
