"""Dask: the fit's and transform's tasks over an archive (``engine``), the long-lived step
runners on the workers (``runners``) and the Dask clusters: local, job queues, TLS
(``clusters``)."""
