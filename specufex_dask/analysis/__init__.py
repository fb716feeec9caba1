"""After the fit: k-means on fingerprints (``clustering``), figures (``plot``), and the
planted and bundled data sets the demos and benchmarks use (``datasets``)."""
