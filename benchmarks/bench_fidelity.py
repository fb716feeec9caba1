"""Do the fingerprints carry structure? Each fit mode and protocol on planted and real data.

Run: ``python benchmarks/bench_fidelity.py [--quick] [--jobs 2] [--out fidelity.json]``
(``--table fidelity.json [--methods ...]`` prints the table of saved results again).

Data sets (:mod:`specufex_dask.analysis.datasets`):

* ``planted-easy|medium|hard``: 600 waveforms of four seismic-like classes (earthquake
  with P and S, gliding harmonic tremor, bursts, emergent long-period signal) in coloured
  noise, through the package's own preprocessing; three difficulty levels;
* ``kw1``: the BW.KW1..EHZ record shipped with ObsPy (2.6 h at 100 Hz) in 20 s windows;
* ``anmo``: IU.ANMO.00.LHZ shipped with ObsPy (one day at 1 Hz) in 30 min windows;
* ``bav``: the ten BAV events of the golden files.

Methods: the reference README's loop (one spectrogram or sequence per ``fit`` call:
600 NMF calls, 300 HMM calls, K0 = 75, S = 15) and the pipeline (``SpecUFEx`` with its
defaults, in-process), each in the default mode and with ``compat="specufex"``; on the
real records also ``specufex-dask run`` with its defaults on an archive; ablations of the
default mode's choices; baselines without a model (k-means and spectral clustering of the
flattened spectrograms and of the mean spectrum). Every model is fitted on 80 % of the events
(seeded split) and scored on all of them:

* ARI (planted only): one cluster per class, by the ``specufex-dask cluster`` default
  (spectral clustering of the idf-transformed fingerprints' neighbour graph) and by the
  alternatives (k-means, other transforms), as ablations;
* patterns kept, states in use (>= 1 % of all frames), distinct fingerprints;
* held-out ELBO per frame of the other 20 % (NMF term, HMM term; the same default-mode
  local steps for every model, :func:`specufex_dask.inference.diagnostics.heldout_elbo_per_frame`);
* silhouette of the default clustering; seconds of the fit.

Planted rows average over ``--seeds`` fit seeds (data seed fixed per difficulty); the real
records run the same seeds. ``--quick`` runs 2 seeds, 300 planted events, no CLI rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np

N_PATTERNS, N_STATES = 75, 15
LOOP_NMF_CALLS, LOOP_HMM_CALLS = 600, 300
TRAIN_FRACTION = 0.8
# k-means restarts, as `specufex-dask cluster` makes them: with 10 the best of the
# restarts still moved the planted ARI between 0.42 and 0.76 from one k-means seed to
# the next on the same fingerprints.
N_INIT = 30
# The supervised ceiling: k-nearest-neighbour labels in a k-fold cross-validation.
CEILING_NEIGHBOURS, CEILING_FOLDS = 10, 5
SHARED = Path(__file__).resolve().parents[2] / "shared"


@dataclass(frozen=True)
class Job:
    """One fit: a data set, a method and a fit seed."""

    dataset: str
    method: str
    seed: int


# ----------------------------------------------------------------------------- data


def load_dataset(name: str, n_planted: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Spectrograms (n, D, M) and planted labels (None for real records)."""
    from specufex_dask.analysis import datasets

    if name.startswith("planted-"):
        difficulty = name.split("-", 1)[1]
        planted = datasets.planted_waveforms(n_planted, difficulty=difficulty, seed=100)
        return datasets.planted_spectrograms(planted), planted.labels
    if name == "kw1":
        return datasets.kw1_spectrograms()[0], None
    if name == "anmo":
        return datasets.anmo_spectrograms()[0], None
    if name == "bav":
        return datasets.bav_spectrograms(SHARED / "data" / "bav_ncsn_1984")[0], None
    raise ValueError(f"unknown data set {name!r}")


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 80/20 split of event indices (sorted)."""
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,))).permutation(n)
    cut = max(1, int(round(TRAIN_FRACTION * n)))
    return np.sort(order[:cut]), np.sort(order[cut:])


# ----------------------------------------------------------------------------- fits


def fit_loop(X: np.ndarray, seed: int, compat: str, **options) -> tuple:
    """The reference README's loop: one spectrogram / sequence per ``fit`` call."""
    from specufex_dask import BayesianHMM, BayesianNonparametricNMF

    rng = np.random.default_rng(seed)
    nmf_keys = ("min_pattern_share", "likelihood_scale")
    nmf_options = {k: v for k, v in options.items() if k in nmf_keys}
    if "nmf_init" in options:  # both models take an `init`: the NMF's start of q(W)
        nmf_options["init"] = options["nmf_init"]
    hmm_options = {k: v for k, v in options.items() if k in ("init",)}
    nmf = BayesianNonparametricNMF(
        X.shape, N_PATTERNS, compat=compat, random_state=seed, **nmf_options
    )
    for _ in range(LOOP_NMF_CALLS):
        nmf.fit(X[rng.integers(len(X), size=1)])
    V = nmf.transform(X)
    hmm = BayesianHMM(
        nmf.num_pat, nmf.gain, N_STATES, compat=compat, random_state=seed, **hmm_options
    )
    for _ in range(LOOP_HMM_CALLS):
        hmm.fit(V[rng.integers(len(V), size=1)])
    return nmf, hmm


def fit_loop_one_stage_in_minibatches(X: np.ndarray, seed: int, stage: str) -> tuple:
    """The default mode's loop with one stage fitted in minibatches instead: 64 events per
    step, 500 NMF or 200 HMM steps (which stage holds the loop back)."""
    from specufex_dask import BayesianHMM, BayesianNonparametricNMF

    rng = np.random.default_rng(seed)
    if stage == "nmf":
        nmf = BayesianNonparametricNMF(
            X.shape, N_PATTERNS, batch_size=64, max_steps=500, tol=None, random_state=seed
        )
        nmf.fit(X)
    else:
        nmf = BayesianNonparametricNMF(X.shape, N_PATTERNS, random_state=seed)
        for _ in range(LOOP_NMF_CALLS):
            nmf.fit(X[rng.integers(len(X), size=1)])
    V = nmf.transform(X)
    if stage == "hmm":
        hmm = BayesianHMM(
            nmf.num_pat, nmf.gain, N_STATES, batch_size=64, max_steps=200, tol=None,
            random_state=seed,
        )  # fmt: skip
        hmm.fit(V)
    else:
        hmm = BayesianHMM(nmf.num_pat, nmf.gain, N_STATES, random_state=seed)
        for _ in range(LOOP_HMM_CALLS):
            hmm.fit(V[rng.integers(len(V), size=1)])
    return nmf, hmm


def fit_loop_start_size(X: np.ndarray, seed: int, size: int) -> tuple:
    """The default mode's loop with q(B) started once the calls bring ``min(size, N)``
    sequences instead of ``min(256, N)`` (``size=1``: from the first call's sequence,
    as before the HMM held its first calls)."""
    import specufex_dask.models as models

    default = models.BayesianHMM._start_size
    with mock.patch.object(
        models.BayesianHMM, "_start_size", lambda self: min(size, default(self))
    ):
        return fit_loop(X, seed, "default")


def fit_loop_schedule(
    X: np.ndarray,
    seed: int,
    delay: float,
    exponent: float,
    stages: tuple[str, ...] = ("nmf", "hmm"),
) -> tuple:
    """The default mode's loop with another step size in ``stages`` (the others keep the
    default): ``rho = (delay / (1 + 5 spread) + step) ** -exponent`` (the default: 250
    and 0.51; ``spread`` is the NMF's temperature - 1 and the HMM's batch size - 1)."""
    import specufex_dask.models as models

    def schedule(step: int, spread: float) -> float:
        return min(1.0, float((delay / (1.0 + 5.0 * spread) + step) ** -exponent))

    replacements = {
        "nmf": ("nmf_step_size", lambda step, temperature: schedule(step, temperature - 1.0)),
        "hmm": ("hmm_step_size", lambda step, batch_size: schedule(step, batch_size - 1)),
    }
    with ExitStack() as patches:
        for stage in stages:
            patches.enter_context(mock.patch.object(models, *replacements[stage]))
        return fit_loop(X, seed, "default")


def fit_pipeline(
    X: np.ndarray, seed: int, compat: str, n_states: int = N_STATES, **options
) -> tuple:
    """``SpecUFEx`` with its defaults (``n_states`` states), on dask's in-process
    scheduler."""
    import xarray as xr

    from specufex_dask import SpecUFEx

    data = xr.DataArray(
        X, dims=("event", "frequency", "time"), coords={"event": [str(i) for i in range(len(X))]}
    )
    model = SpecUFEx(
        N_PATTERNS, n_states, compat=compat, random_state=seed, client=False, **options
    )
    model.fit(data)
    return model.nmf_, model.hmm_


def fit_pipeline_share(X: np.ndarray, seed: int, share: float) -> tuple:
    """``SpecUFEx`` with its defaults but another default share pruning of the NMF."""
    import specufex_dask.models as models

    with mock.patch.object(models, "MIN_PATTERN_SHARE", share):
        return fit_pipeline(X, seed, "default")


def fit_minibatch(
    X: np.ndarray, seed: int, nmf_options=None, hmm_options=None, n_states: int = N_STATES
) -> tuple:
    """The in-memory estimators as ``SpecUFEx`` drives them, without its convergence stop:
    minibatches of 64, 200 NMF and 200 HMM steps (for ablations of single settings)."""
    from specufex_dask import BayesianHMM, BayesianNonparametricNMF

    nmf = BayesianNonparametricNMF(
        X.shape, N_PATTERNS, batch_size=64, max_steps=200, random_state=seed,
        **(nmf_options or {}),
    )  # fmt: skip
    nmf.fit(X)
    V = nmf.transform(X)
    hmm = BayesianHMM(
        nmf.num_pat, nmf.gain, n_states, batch_size=64, max_steps=200, random_state=seed,
        **(hmm_options or {}),
    )  # fmt: skip
    hmm.fit(V)
    return nmf, hmm


def fit_cli(X: np.ndarray, seed: int) -> tuple:
    """``specufex-dask run ARCHIVE --seed SEED`` with every other default."""
    from specufex_dask import SpecUFEx
    from specufex_dask.io.archive import write_spectrograms

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.zarr"
        frequency = np.arange(X.shape[1], dtype=float)
        time_axis = np.arange(X.shape[2], dtype=float)
        write_spectrograms(path, X, [str(i) for i in range(len(X))], frequency, time_axis)
        command = [sys.executable, "-m", "specufex_dask.cli", "run", str(path)]
        subprocess.run([*command, "--seed", str(seed), "--quiet"], check=True)
        model = SpecUFEx.from_archive(str(path), client=False)
        return model.nmf_, model.hmm_


METHODS: dict[str, Callable[[np.ndarray, int], tuple]] = {
    "loop default": lambda X, s: fit_loop(X, s, "default"),
    "loop compat": lambda X, s: fit_loop(X, s, "specufex"),
    "pipeline default": lambda X, s: fit_pipeline(X, s, "default"),
    "pipeline compat": lambda X, s: fit_pipeline(X, s, "specufex"),
    "cli default": fit_cli,
}
# One default setting changed at a time (fewer seeds: --ablation-seeds).
ABLATIONS: dict[str, Callable[[np.ndarray, int], tuple]] = {
    "loop: random q(B)": lambda X, s: fit_loop(X, s, "default", init="random"),
    "loop: scale by frames": lambda X, s: fit_loop(X, s, "default", likelihood_scale="frames"),
    "loop: data q(W)": lambda X, s: fit_loop(X, s, "default", nmf_init="data"),
    "loop: step (250 + t)^-0.75": lambda X, s: fit_loop_schedule(X, s, 250.0, 0.75),
    "loop: step (50 + t)^-0.75": lambda X, s: fit_loop_schedule(X, s, 50.0, 0.75),
    "loop: step (20 + t)^-1": lambda X, s: fit_loop_schedule(X, s, 20.0, 1.0),
    "loop: NMF in minibatches": lambda X, s: fit_loop_one_stage_in_minibatches(X, s, "nmf"),
    "loop: HMM in minibatches": lambda X, s: fit_loop_one_stage_in_minibatches(X, s, "hmm"),
    "loop: q(B) from the first sequence": lambda X, s: fit_loop_start_size(X, s, 1),
    "loop: q(B) from 64 sequences": lambda X, s: fit_loop_start_size(X, s, 64),
    **{
        f"pipeline: {n} states": functools.partial(fit_pipeline, compat="default", n_states=n)
        for n in (10, 20, 25)
    },
    **{
        f"loop: HMM step ({delay} + t)^-{exponent}": functools.partial(
            fit_loop_schedule, delay=delay, exponent=exponent, stages=("hmm",)
        )
        for delay, exponent in ((250, 0.75), (256, 1.0), (64, 1.0), (1000, 0.51))
    },
    "pipeline: share 1e-3 (budget 1000)": functools.partial(fit_pipeline_share, share=1e-3),
    "minibatch default": lambda X, s: fit_minibatch(X, s),
    "minibatch: scale by frames": lambda X, s: fit_minibatch(X, s, {"likelihood_scale": "frames"}),
    "minibatch: random q(B)": lambda X, s: fit_minibatch(X, s, None, {"init": "random"}),
    "minibatch: data q(W)": lambda X, s: fit_minibatch(X, s, {"init": "data"}),
    "minibatch: no share pruning": lambda X, s: fit_minibatch(X, s, {"min_pattern_share": None}),
    "minibatch: share 1e-3": lambda X, s: fit_minibatch(X, s, {"min_pattern_share": 1e-3}),
    "minibatch: merge cos 0.95": lambda X, s: fit_minibatch(X, s, {"merge_cosine": 0.95}),
    "minibatch: 8 states": lambda X, s: fit_minibatch(X, s, None, None, n_states=8),
}
BASELINES = (
    "k-means on spectrograms",
    "k-means on mean spectrum",
    "spectral on spectrograms",
    "spectral on mean spectrum",
)
# Rows in fidelity.json that this script no longer makes: the main methods' defaults when
# the NMF's default was likelihood_scale="frames", when it was min_pattern_share=1e-3,
# and when the pipeline's default budget was at least 200 steps (not 1000) under the
# former stopping rule (same fit code otherwise).
RECORDED = (
    "pipeline: scale by frames",
    "loop: share 1e-3",
    "pipeline: share 1e-3",
    "cli: share 1e-3",
    "pipeline: budget 200",
    "cli: budget 200",
)
ORDER = [*METHODS, *ABLATIONS, *RECORDED, *BASELINES]
# (transform, PCA components, clustering) of the fingerprints; the first is the `cluster`
# command's default, the others its alternatives (keys as fidelity.json stores them).
FEATURES = {
    "spectral idf": ("idf", None, "spectral"),
    "idf": ("idf", None, "kmeans"),
    "spectral hellinger": ("hellinger", None, "spectral"),
    "hellinger": ("hellinger", None, "kmeans"),
    "raw": ("none", None, "kmeans"),
    "sqrt": ("sqrt", None, "kmeans"),
    "hellinger+pca8": ("hellinger", 8, "kmeans"),
}
DEFAULT_FEATURES = "spectral idf"
# How the table heads each FEATURES column.
COLUMN_NAMES = {
    "spectral idf": "ARI (spectral idf; baselines as named)",
    "idf": "ARI k-means idf",
    "spectral hellinger": "ARI spectral hellinger",
    "hellinger": "ARI k-means hellinger",
    "raw": "ARI k-means raw",
    "sqrt": "ARI k-means sqrt",
    "hellinger+pca8": "ARI k-means hellinger+pca8",
}


# ----------------------------------------------------------------------------- scores


def _silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return (
        float("nan") if len(np.unique(labels)) < 2 else float(silhouette_score(features, labels))
    )


def _kmeans(features: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, float]:
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters, n_init=N_INIT, random_state=seed).fit_predict(features)
    return labels, _silhouette(features, labels)


def _spectral(features: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Spectral clustering as the `cluster` command makes it, on any features."""
    from specufex_dask.analysis import clustering

    graph = clustering._neighbour_graph(
        features, clustering.SPECTRAL_NEIGHBOURS, n_clusters, seed, clustering.SPECTRAL_SAMPLE
    )
    return clustering._spectral(features, n_clusters, graph, seed)


def supervised_ari(features: np.ndarray, truth: np.ndarray | None, seed: int) -> float:
    """ARI of the planted labels predicted from ``features`` by a supervised classifier.

    10-nearest-neighbour votes in a seeded 5-fold cross-validation: how much of the
    classes the features hold at all, the ceiling that no clustering of them is likely
    to pass (NaN for real records).
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    if truth is None:
        return float("nan")
    folds = StratifiedKFold(CEILING_FOLDS, shuffle=True, random_state=seed)
    predicted = cross_val_predict(
        KNeighborsClassifier(CEILING_NEIGHBOURS), features, truth, cv=folds
    )
    return _ari(truth, predicted)


def _ari(truth: np.ndarray | None, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float("nan") if truth is None else float(adjusted_rand_score(truth, labels))


def score_model(nmf, hmm, X: np.ndarray, test: np.ndarray, truth, n_clusters: int, seed: int):
    """Scores of a fitted model on all events (ELBO on the held-out ones)."""
    import xarray as xr
    from sklearn.decomposition import PCA

    from specufex_dask.analysis.clustering import cluster_fingerprints, fingerprint_features
    from specufex_dask.inference.diagnostics import (
        distinct_fraction,
        heldout_elbo_per_frame,
        states_in_use,
    )

    V = nmf.transform(X)
    prints, _, gam = hmm.transform(V)
    fingerprint = xr.DataArray(
        prints, dims=("event", "state", "next_state"), coords={"event": np.arange(len(X))}
    )
    result = {
        "patterns": int(nmf.num_pat),
        "states": states_in_use(gam),
        "distinct": distinct_fraction(prints),
    }
    result["nmf_elbo"], result["hmm_elbo"] = heldout_elbo_per_frame(nmf, hmm, X[test])
    for name, (transform, components, method) in FEATURES.items():
        clustering = cluster_fingerprints(
            fingerprint,
            n_clusters,
            n_init=N_INIT,
            transform=transform,
            pca_components=components,
            method=method,
            random_state=seed,
        )
        labels = clustering.labels.values
        features = fingerprint_features(fingerprint, transform)
        if components is not None:
            features = PCA(components, random_state=seed).fit_transform(features)
        result[f"ari {name}"] = _ari(truth, labels)
        result[f"silhouette {name}"] = _silhouette(features, labels)
        if name == DEFAULT_FEATURES:
            result["ari supervised"] = supervised_ari(features, truth, seed)
    return result


def score_baseline(name: str, X: np.ndarray, truth, n_clusters: int, seed: int) -> dict:
    """The ARI of k-means or spectral clustering of spectrograms or mean spectra."""
    features = X.reshape(len(X), -1) if name.endswith("spectrograms") else X.mean(axis=2)
    if name.startswith("spectral"):
        labels = _spectral(features, n_clusters, seed)
        silhouette = _silhouette(features, labels)
    else:
        labels, silhouette = _kmeans(features, n_clusters, seed)
    ceiling = supervised_ari(features, truth, seed)
    return {"ari": _ari(truth, labels), "silhouette": silhouette, "ari supervised": ceiling}


def run_job(job: Job, n_planted: int) -> dict:
    """Fit and score one job (in a worker process)."""
    X, truth = load_dataset(job.dataset, n_planted)
    n_clusters = 4
    start = time.perf_counter()
    if job.method in BASELINES:
        scores = score_baseline(job.method, X, truth, n_clusters, job.seed)
        return {**job.__dict__, **scores, "seconds": time.perf_counter() - start}
    train, test = split(len(X), job.seed)
    if len(test) == 0:
        test = train
    nmf, hmm = {**METHODS, **ABLATIONS}[job.method](X[train], job.seed)
    seconds = time.perf_counter() - start
    scores = score_model(nmf, hmm, X, test, truth, n_clusters, job.seed)
    return {**job.__dict__, **scores, "seconds": seconds}


# ----------------------------------------------------------------------------- report


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _mean(values: list[float], fmt: str = ".3g") -> str:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return format(statistics.mean(values), fmt) if values else "-"


def table(results: list[dict]) -> str:
    """Markdown table: one row per data set and method, means (± sd) over seeds."""
    ari_columns = " | ".join(COLUMN_NAMES[name] for name in FEATURES)
    lines = [
        f"| data | method | {ari_columns} | ARI supervised | patterns | states >= 1 % "
        "| distinct | held-out ELBO/frame NMF | HMM | silhouette | s |",
        "|---|---|" + "---:|" * (len(FEATURES) + 8),
    ]
    keys = sorted(
        {(r["dataset"], r["method"]) for r in results},
        key=lambda k: (k[0], ORDER.index(k[1]) if k[1] in ORDER else len(ORDER)),
    )
    for dataset, method in keys:
        rows = [r for r in results if r["dataset"] == dataset and r["method"] == method]

        def get(key: str, rows: list[dict] = rows) -> list:
            return [r.get(key, float("nan")) for r in rows]

        if method in BASELINES:
            blanks = " |" * (len(FEATURES) - 1)
            lines.append(
                f"| {dataset} | {method} | {_mean_sd(get('ari'))} |{blanks} "
                f"{_mean_sd(get('ari supervised'))} |" + " |" * 5 + " "
                f"{_mean(get('silhouette'))} | {_mean(get('seconds'), '.1f')} |"
            )
            continue
        aris = " | ".join(_mean_sd(get(f"ari {name}")) for name in FEATURES)
        # rows of the time k-means of the idf fingerprints was the default hold its own
        silhouette = get(f"silhouette {DEFAULT_FEATURES}")
        if all(isinstance(v, float) and math.isnan(v) for v in silhouette):
            silhouette = get("silhouette idf")
        lines.append(
            f"| {dataset} | {method} | {aris} | {_mean_sd(get('ari supervised'))} "
            f"| {_mean(get('patterns'), '.1f')} "
            f"| {_mean(get('states'), '.1f')} | {_mean(get('distinct'), '.3f')} "
            f"| {_mean(get('nmf_elbo'), '.4g')} | {_mean(get('hmm_elbo'), '.4g')} "
            f"| {_mean(silhouette)} | {_mean(get('seconds'), '.1f')} |"
        )
    return "\n".join(lines)


def jobs_for(
    datasets: list[str], methods: list[str], seeds: list[int], ablation_seeds: list[int], cli: bool
) -> list[Job]:
    """Every (data set, method, seed) to run; ablations on their own seeds."""
    jobs = []
    for dataset in datasets:
        for method in methods:
            if method == "cli default" and (not cli or dataset.startswith("planted")):
                continue
            for seed in ablation_seeds if method in ABLATIONS else seeds:
                jobs.append(Job(dataset, method, seed))
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--datasets", default="planted-easy,planted-medium,planted-hard,kw1,anmo,bav"
    )
    parser.add_argument("--ablation-seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--out", default="fidelity.json")
    parser.add_argument(
        "--table", metavar="JSON", help="print the table of saved results (of --methods) and stop"
    )
    args = parser.parse_args(argv)
    if args.table:
        wanted = set(args.methods.split(","))
        saved = json.loads(Path(args.table).read_text())
        print(table([r for r in saved if "error" not in r and r["method"] in wanted]))
        return
    seeds = list(range(2 if args.quick else args.seeds))
    n_planted = 300 if args.quick else 600
    ablation_seeds = seeds[: args.ablation_seeds]
    methods = [m for m in args.methods.split(",") if m not in RECORDED]
    jobs = jobs_for(args.datasets.split(","), methods, seeds, ablation_seeds, not args.quick)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = []
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [(job, pool.submit(run_job, job, n_planted)) for job in jobs]
        for job, future in futures:
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - a failed fit is a row, not a crash
                result = {**job.__dict__, "error": repr(error)}
            results.append(result)
            print(json.dumps(result), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    print(table([r for r in results if "error" not in r]))


if __name__ == "__main__":
    main()
