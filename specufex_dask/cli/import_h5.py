"""``specufex-dask import-h5``: a SpecUFEx workflow HDF5 file to an archive."""

from __future__ import annotations

import argparse

from specufex_dask.cli.archive import OUTPUT_VARIABLES, open_archive, record_configuration
from specufex_dask.cli.base import Commands, chunk_events
from specufex_dask.cli.config import Config
from specufex_dask.cli.options import SPECTROGRAM_FLAGS, add_flags
from specufex_dask.cli.progress import Reporter

__all__ = ["cmd_import_h5", "register"]


def register(commands: Commands) -> None:
    """Add the ``import-h5`` command."""
    import_h5 = commands.add(
        "import-h5",
        "SpecUFEx HDF5 file -> archive",
        "Convert a SpecUFEx workflow HDF5 file (spectrograms/transformed_spectrograms, "
        "fSTFT, tSTFT and, when present, ACM, STM, As and fingerprints) into an archive. "
        "Values are copied unchanged.",
        cmd_import_h5,
    )
    import_h5.add_argument("h5file", metavar="H5FILE", help="SpecUFEx workflow HDF5 file")
    import_h5.add_argument("archive", metavar="ARCHIVE", help="archive to write")
    import_h5.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    import_h5.add_argument(
        "--spectrograms-only",
        action="store_true",
        help="leave out the ACM, STM, As and fingerprint outputs of the file",
    )
    chunking = [flag for flag in SPECTROGRAM_FLAGS if flag.key == "events_per_chunk"]
    add_flags(import_h5, "archive", chunking, commands.defaults)


def cmd_import_h5(args: argparse.Namespace, config: Config, reporter: Reporter) -> int:
    """SpecUFEx workflow HDF5 file to an archive."""
    from specufex_dask.io.h5import import import_specufex_h5

    path = import_specufex_h5(
        args.h5file,
        args.archive,
        overwrite=args.overwrite,
        include_outputs=not args.spectrograms_only,
        **chunk_events(config),
    )
    record_configuration(path, config, ["spectrograms"], "import-h5")
    dataset = open_archive(path)
    outputs = [name for name in OUTPUT_VARIABLES if name in dataset.variables]
    print(
        f"imported {dataset.sizes['event']} events from {args.h5file} into {path}"
        + (f" with {', '.join(outputs)}" if outputs else "")
    )
    return 0
