"""Event windows from an SDS archive: windows per second, QuakeML to a Zarr archive.

Builds a temporary SDS tree of synthetic 100 Hz day files (``--hours`` of seeded noise per
day and station) and a QuakeML of ``--events-per-day`` events a day at random times, then
ingests a 20 s window per event and station (dask's threaded scheduler). Prints the wall
time and windows per second.

Usage: python benchmarks/bench_windows.py [--days 2] [--stations 2] [--hours 6]
       [--events-per-day 40] [--chunk-events 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import obspy
from obspy.core.event import Catalog, Event, Origin

from specufex_dask.ingest.driver import ingest_quakeml
from specufex_dask.ingest.preprocessing import SpectrogramParameters

PARAMS = SpectrogramParameters(fs=100.0, nfft=256, fmin=2, fmax=30)
DAY0 = obspy.UTCDateTime("2020-01-01")


def make_sds(root: Path, days: int, stations: int, hours: float, rng) -> list[str]:
    ids = [f"XX.S{k:02d}..HHZ" for k in range(stations)]
    for day in range(days):
        for seed_id in ids:
            net, sta, loc, cha = seed_id.split(".")
            data = np.round(rng.standard_normal(int(hours * 3600 * 100)) * 1e3).astype(np.int32)
            start = DAY0 + day * 86400
            header = {"network": net, "station": sta, "location": loc, "channel": cha,
                      "sampling_rate": 100.0, "starttime": start}  # fmt: skip
            name = f"{seed_id}.D.{start.year}.{start.julday:03d}"
            path = root / str(start.year) / net / sta / f"{cha}.D" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            obspy.Trace(data, header).write(str(path), format="MSEED")
    return ids


def make_quakeml(path: Path, days: int, per_day: int, hours: float, rng) -> int:
    events = []
    for day in range(days):
        for offset in np.sort(rng.uniform(10, hours * 3600 - 30, per_day)):
            origin = Origin(time=DAY0 + day * 86400 + float(offset), latitude=0, longitude=0)
            event = Event(origins=[origin])
            event.preferred_origin_id = origin.resource_id
            events.append(event)
    Catalog(events).write(str(path), format="QUAKEML")
    return len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--stations", type=int, default=2)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--events-per-day", type=int, default=40)
    parser.add_argument("--chunk-events", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = make_sds(root / "sds", args.days, args.stations, args.hours, rng)
        n_events = make_quakeml(
            root / "events.xml", args.days, args.events_per_day, args.hours, rng
        )
        started = time.perf_counter()
        report = ingest_quakeml(
            root / "events.xml", root / "out.zarr", PARAMS, waveforms=root / "sds",
            stations=ids, window=(5, 15), chunk_events=args.chunk_events,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    for row in report.rejected[:5]:
        print(f"rejected {row.event}: {row.reason}")
    print(
        f"{n_events} events x {len(ids)} stations: {report.n_written} windows written, "
        f"{report.n_rejected} rejected, {seconds:.2f} s, {report.n_inputs / seconds:.1f} windows/s"
    )


if __name__ == "__main__":
    main()
