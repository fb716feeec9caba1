"""Storage: the Zarr archive's schema and writers (``archive``), direct reads of its chunks
(``chunkread``), the ``model`` group's writes and reads (``modelgroup``), how far the
transform's outputs are (``status``), the lease that keeps one writer per archive
(``lease``) and the import of SpecUFEx workflow HDF5 files (``h5import``). Loads no
estimator."""
