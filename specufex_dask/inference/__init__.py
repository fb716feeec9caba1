"""The variational inference of SpecUFEx on arrays in memory: sufficient statistics and
their summation tree, the global updates, the local steps over a batch, initialisation,
seeding, input checks, the stopping rule and diagnostics, and the reference's schedule
(``compat``). NumPy, SciPy and Numba only; imports only from ``kernels``."""
