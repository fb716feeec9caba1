"""Dask, behind one interface: the executors (``executor``: the protocol and its task
implementation; ``runners``: the actor implementation with its step runners), what the
engine hands them for a step (``tasks``), the fit's and transform's passes and steps over
an archive (``engine``) and the Dask clusters: local, job queues, TLS (``clusters``)."""
