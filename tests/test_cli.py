"""End-to-end tests of the ``specufex-dask`` command line, run in subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from specufex_dask import __version__
from specufex_dask.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def console_script() -> str:
    """The ``specufex-dask`` entry point of this interpreter's environment, else the one on
    PATH (which may belong to another installation)."""
    beside = Path(sys.executable).with_name("specufex-dask")
    script = str(beside) if beside.exists() else shutil.which("specufex-dask")
    assert script is not None, "the specufex-dask console script is not installed"
    return script


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``specufex-dask ARGS`` in a subprocess; return the finished process."""
    command = [console_script(), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def call_main(capsys, *args: str | Path) -> tuple[int, str, str]:
    """Run the command line in this process (for checks that need no subprocess)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def error_line(result: subprocess.CompletedProcess) -> str:
    """The single error line of a failed command (and check there is no traceback)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("specufex-dask: error:")
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def scheduler():
    """One in-process Dask cluster on 127.0.0.1 shared by the commands of this module."""
    import distributed

    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def golden_archive(tmp_path_factory):
    """The golden SpecUFEx h5 file imported through the CLI (4 events per chunk)."""
    from tests.conftest import GOLDEN

    path = tmp_path_factory.mktemp("golden") / "golden.zarr"
    args = ["import-h5", str(GOLDEN / "SpecUFEx_test1.h5"), str(path), "--events-per-chunk", "4"]
    assert main(args) == 0
    return path


def test_help_of_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("spectrograms", "import-h5", "fit", "transform", "run", "info", "cluster"):
        assert command in text
    for command in ("plot", "demo"):
        assert command in text
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    fit_help = capsys.readouterr().out
    for flag in ("--num-pat", "--num-state", "--nmf-steps", "--scheduler", "--workers"):
        assert flag in fit_help
    assert "(default: 75; config: nmf.num_pat)" in " ".join(fit_help.split())
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"specufex-dask {__version__}"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    demo_help = " ".join(capsys.readouterr().out.split())
    assert "(default: 15; config: hmm.num_state)" in demo_help
    assert "(default: 5; config: clustering.n_clusters)" in demo_help  # the demo's own default
    assert "(default: idf; config: clustering.transform)" in demo_help


def test_import_h5_and_info(golden_archive, golden_dir, capsys):
    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as h5:
        group = h5["spectrograms/transformed_spectrograms"]
        ids = list(group.keys())
        expected = np.stack([group[i][()] for i in ids])
    archive = xr.open_zarr(golden_archive)
    assert list(archive["event"].values) == ids
    np.testing.assert_array_equal(archive["spectrogram"].values, expected)

    text = ok(run_cli("info", golden_archive)).stdout
    assert text.startswith(f"archive: {golden_archive}\n")
    assert f"events: {len(ids)}\n" in text
    assert "shards: 256 events per shard file (1 shard) in chunks of 1 event(s)" in text
    assert "fingerprint: 10 event x 15 state x 15 next_state" in text
    assert "cluster: missing" in text
    code, out, _ = call_main(capsys, "info", golden_archive, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["n_events"] == 10
    assert (summary["chunks"], summary["shard_events"]) == ([1, 241, 26], 256)
    assert summary["outputs"]["activation"]["shape"] == [10, 75, 26]
    assert summary["rejected"] == []
    assert summary["configuration"]["history"][0]["command"] == "import-h5"


def test_cluster_labels_equal_sklearn(golden_archive, tmp_path):
    archive = tmp_path / "clustered.zarr"
    shutil.copytree(golden_archive, archive)
    config = tmp_path / "run.yaml"
    config.write_text(
        "clustering:\n  n_clusters: 5\n  pca_components: 4\n  n_init: 3\n  transform: sqrt\n"
        "  method: kmeans\n"
    )
    result = ok(
        run_cli(
            "cluster", archive, "--config", config, "--n-clusters", "3", "--seed", "5",
            "--transform", "none",
        )
    )  # fmt: skip
    stored = xr.open_zarr(archive)
    fingerprints = stored["fingerprint"].values.reshape(10, -1)
    scores = PCA(n_components=4, random_state=5).fit_transform(fingerprints)
    expected = KMeans(n_clusters=3, n_init=3, random_state=5).fit_predict(scores)
    np.testing.assert_array_equal(stored["cluster"].values, expected)
    assert stored["cluster"].attrs["transform"] == "none"  # the flag overrides the file
    counts = np.bincount(expected, minlength=3)
    assert "10 events in 3 clusters (kmeans on the none fingerprints" in result.stdout
    for label, count in enumerate(counts):
        noun = "event" if count == 1 else "events"
        assert f"cluster {label}: {count} {noun}" in result.stdout
    # The spectrograms and the other attributes survive the added variable.
    np.testing.assert_array_equal(
        stored["spectrogram"].values, xr.open_zarr(golden_archive)["spectrogram"].values
    )
    assert stored.attrs["specufex_dask_archive_version"] == 1
    record = json.loads(stored.attrs["specufex_dask_config"])
    assert record["clustering"] == {
        "n_clusters": 3,  # the flag overrides the file
        "pca_components": 4,
        "random_state": 5,
        "n_init": 3,
        "transform": "none",
        "method": "kmeans",
        "n_neighbors": 20,
        "pca_variance": None,
        "scale": False,
        "silhouette_sample": 5000,
    }
    assert [entry["command"] for entry in record["history"]] == ["import-h5", "cluster"]
    assert "cluster sizes" in ok(run_cli("info", archive)).stdout


def test_cluster_sweeps_k_with_ward_and_stores_silhouettes(golden_archive, tmp_path, capsys):
    from sklearn.metrics import silhouette_samples, silhouette_score

    archive = tmp_path / "swept.zarr"
    shutil.copytree(golden_archive, archive)
    code, out, err = call_main(
        capsys, "cluster", archive, "--n-clusters", "2-5", "--method", "ward",
        "--transform", "none", "--pca-variance", "0.9", "--scale", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    stored = xr.open_zarr(archive)
    # Independently: scale, PCA to 90 %, Ward's tree cut at each K, silhouettes of all 10.
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    features = StandardScaler().fit_transform(stored["fingerprint"].values.reshape(10, -1))
    scores = PCA(n_components=0.9, svd_solver="full").fit_transform(features)
    tree = linkage(scores, method="ward")
    cuts = {k: fcluster(tree, k, "maxclust") - 1 for k in range(2, 6)}
    means = {k: silhouette_score(scores, cuts[k]) for k in cuts}
    best = max(means, key=lambda k: (means[k], -k))
    np.testing.assert_array_equal(stored["cluster"].values, cuts[best])
    np.testing.assert_allclose(
        stored["silhouette"].values, silhouette_samples(scores, cuts[best]), atol=1e-10
    )
    assert stored["cluster"].attrs["method"] == "ward"
    assert stored["cluster"].attrs["swept_n_clusters"] == [2, 3, 4, 5]
    assert f"chose {best}" in out and f"10 events in {best} clusters (ward" in out
    assert "centroid_distance" in stored
    record = json.loads(stored.attrs["specufex_dask_config"])["clustering"]
    assert record["n_clusters"] == [2, 3, 4, 5] and record["scale"] is True
    with pytest.raises(SystemExit) as usage:
        main(["cluster", str(archive), "--n-clusters", "5-4"])
    assert usage.value.code == 2 and "fewer than two values" in capsys.readouterr().err


def hellinger_features(fingerprint: np.ndarray) -> np.ndarray:
    """sqrt(v[i] Q[i, j]) from F[i, j] = v[i] sqrt(Q[i, j]), written out independently."""
    n_events, n_states, _ = fingerprint.shape
    features = np.zeros_like(fingerprint)
    for e in range(n_events):
        for i in range(n_states):
            v = np.sqrt(np.sum(fingerprint[e, i] ** 2))  # sum_j v^2 Q[i, j] = v^2
            if v > 0:
                features[e, i] = np.sqrt(fingerprint[e, i] ** 2 / v)  # sqrt(v Q[i, j])
    return features.reshape(n_events, -1)


def spectral_labels(features: np.ndarray, n_clusters: int, n_neighbors: int) -> np.ndarray:
    """scikit-learn's spectral clustering of the features' neighbour graph, seed 0."""
    from sklearn.cluster import SpectralClustering

    spectral = SpectralClustering(
        n_clusters,
        affinity="nearest_neighbors",
        n_neighbors=n_neighbors,
        assign_labels="discretize",
        random_state=0,
    )
    return spectral.fit_predict(features)


def idf_features(fingerprint: np.ndarray) -> np.ndarray:
    """hellinger_features with each column times sqrt(log((1 + n) / (1 + n_j))), n_j the
    events whose joint probability there is >= 1e-3 (the others' entries 0), then rows at
    unit length."""
    features = hellinger_features(fingerprint)
    n_events = len(features)
    for column in range(features.shape[1]):
        made = [value**2 >= 1e-3 for value in features[:, column]]
        weight = np.sqrt(np.log((1 + n_events) / (1 + sum(made))))
        features[:, column] = [
            v * weight if m else 0.0 for v, m in zip(features[:, column], made, strict=True)
        ]
    for row in features:
        norm = np.sqrt(np.sum(row**2))
        if norm > 0:
            row /= norm
    return features


def test_cluster_defaults_to_the_idf_transform(golden_archive, tmp_path, capsys):
    archive = tmp_path / "clustered.zarr"
    shutil.copytree(golden_archive, archive)
    code, out, err = call_main(capsys, "cluster", archive, "--n-clusters", "3", "--quiet")
    assert code == 0, err
    stored = xr.open_zarr(archive)
    assert stored["cluster"].attrs["transform"] == "idf"
    assert "(spectral on the idf fingerprints" in out
    features = idf_features(stored["fingerprint"].values)
    # 10 events in 3 clusters: the graph's neighbours are cut to 2 (self included)
    assert stored["cluster"].attrs["n_neighbors"] == 2
    expected = spectral_labels(features, 3, n_neighbors=2)
    np.testing.assert_array_equal(stored["cluster"].values, expected)
    assert json.loads(stored.attrs["specufex_dask_config"])["clustering"]["transform"] == ("idf")
    # a configuration file's value reaches the clustering too
    config = tmp_path / "run.yaml"
    config.write_text("clustering: {n_clusters: 2, transform: sqrt, method: kmeans}\n")
    code, out, err = call_main(capsys, "cluster", archive, "--config", config, "--quiet")
    assert code == 0, err
    stored = xr.open_zarr(archive)
    assert stored["cluster"].attrs["transform"] == "sqrt"
    # the reference's fingerprints hold round-off like -1e-18: the transform takes them as 0
    scores = np.sqrt(np.maximum(stored["fingerprint"].values.reshape(10, -1), 0.0))
    expected = KMeans(n_clusters=2, n_init=30, random_state=0).fit_predict(scores)
    np.testing.assert_array_equal(stored["cluster"].values, expected)
    # the help says what the default is and why
    with pytest.raises(SystemExit):
        main(["cluster", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--transform {none,sqrt,hellinger,idf}" in text
    assert "(default: idf; config: clustering.transform)" in text
    assert "--method {spectral,kmeans,ward}" in text
    assert "(default: spectral; config: clustering.method)" in text
    assert "on the idf transform" in text and "0.97 / 0.86 / 0.65" in text


def test_a_bad_transform_is_one_error_line(golden_archive, tmp_path, capsys):
    expected = (
        "specufex-dask: error: invalid value 'cosine' for 'clustering.transform': expected "
        "one of 'none', 'sqrt', 'hellinger', 'idf'"
    )
    line = error_line(run_cli("cluster", golden_archive, "--transform", "cosine"))
    assert line == expected + " (in command-line flags)"
    config = tmp_path / "bad.yaml"
    config.write_text("clustering:\n  transform: Hellinger\n")
    code, _, err = call_main(capsys, "cluster", golden_archive, "--config", config)
    assert code == 1 and err.count("\n") == 1
    assert "invalid value 'Hellinger' for 'clustering.transform'" in err and str(config) in err
    assert "cluster" not in xr.open_zarr(golden_archive).variables  # nothing was written


def test_plot_writes_the_figures_the_archive_allows(golden_archive, tmp_path):
    archive = tmp_path / "clustered.zarr"
    shutil.copytree(golden_archive, archive)
    assert main(["cluster", str(archive), "--n-clusters", "2", "--quiet"]) == 0
    outdir = tmp_path / "figures"
    result = ok(run_cli("plot", archive, outdir, "--events", "13436,24966", "--dpi", "50"))
    names = sorted(path.name for path in outdir.iterdir())
    # The imported file has no model (no dictionary or emission figure), no event times
    # and no coordinates (no occurrence or map); the clustering stored silhouettes.
    assert names == [
        "cluster_examples.png", "clusters.png", "event_13436.png", "event_24966.png",
        "fingerprints.png",
    ]  # fmt: skip
    for path in outdir.iterdir():
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert result.stdout.split() == [str(outdir / name) for name in sorted(names, key=_plot_order)]
    assert "not drawn, the archive has no model" in result.stderr


def _plot_order(name: str) -> int:
    order = [
        "event_13436.png", "event_24966.png", "fingerprints.png", "clusters.png",
        "cluster_examples.png",
    ]  # fmt: skip
    return order.index(name)


def test_plot_unknown_event(golden_archive, tmp_path, capsys):
    code, _, err = call_main(capsys, "plot", golden_archive, tmp_path, "--events", "10633,nope")
    assert code == 1
    assert err.strip().startswith("specufex-dask: error: event(s) not in the archive: nope")


def test_spectrograms_on_a_running_scheduler(bav_dir, golden_dir, tmp_path, scheduler, capsys):
    archive = tmp_path / "bav.zarr"
    config = tmp_path / "bav.yaml"
    config.write_text(
        "spectrograms:\n  fs: 100\n  window_s: 1\n  overlap: 0.25\n  nfft: 2000\n"
        "  fmin: 8\n  fmax: 20\n  n_samples: 2000\n"
    )
    code, out, err = call_main(
        capsys,
        "spectrograms",
        bav_dir / "waveforms",
        "-o",
        archive,
        "--config",
        config,
        "--events-per-chunk",
        "3",
        "--scheduler",
        scheduler,
    )
    assert code == 0, err
    assert "ingested 10 of 10 inputs" in out
    assert f"Dask: {scheduler}" in err
    stored = xr.open_zarr(archive)
    with h5py.File(golden_dir / "SpecUFEx_test1.h5", "r") as h5:
        group = h5["spectrograms/transformed_spectrograms"]
        for event in stored["event"].values:
            expected = group[str(event).rsplit(".", 1)[1]][()]
            np.testing.assert_allclose(
                stored["spectrogram"].sel(event=event).values, expected, rtol=1e-10, atol=1e-10
            )
    record = json.loads(stored.attrs["specufex_dask_config"])
    assert record["spectrograms"]["nfft"] == 2000
    assert record["spectrograms"]["events_per_chunk"] == 3
    # the spectrograms are sharded whatever the chunk length of the other arrays
    assert stored["spectrogram"].encoding["chunks"] == (1, 241, 26)
    assert stored["spectrogram"].encoding["shards"] == (256, 241, 26)


def test_bad_config_file(golden_archive, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("nmf:\n  num_pattern: 5\n")
    line = error_line(run_cli("cluster", golden_archive, "--config", config))
    assert f"unknown key 'nmf.num_pattern' in {config}" in line
    config.write_text("clustering:\n  n_clusters: three\n")
    code, _, err = call_main(capsys, "cluster", golden_archive, "--config", config)
    assert code == 1
    assert "wrong type for 'clustering.n_clusters'" in err
    code, _, err = call_main(capsys, "cluster", golden_archive, "--n-clusters", "0")
    assert code == 1
    assert "'clustering.n_clusters'" in err and "command-line flags" in err


def test_bad_paths(tmp_path, capsys):
    missing = tmp_path / "missing.zarr"
    line = error_line(run_cli("info", missing))
    assert line == f"specufex-dask: error: archive not found: {missing} does not exist"
    code, _, err = call_main(capsys, "import-h5", tmp_path / "none.h5", missing)
    assert (code, err.count("\n")) == (1, 1)
    assert "not found" in err
    code, _, err = call_main(capsys, "info", missing, "--config", tmp_path / "none.yaml")
    assert code == 1 and "cannot read configuration file" in err
    with pytest.raises(Exception, match="archive not found"):
        main(["info", str(missing), "--debug"])  # --debug lets the traceback through


def test_usage_errors_exit_2(capsys):
    for args in (["cluster"], ["fit", "x.zarr", "--num-pat", "many"], ["nonsense"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`specufex-dask demo` as a user runs it: its own settings and step budgets."""
    outdir = tmp_path_factory.mktemp("demo")
    result = run_cli("demo", outdir)
    return outdir, result


def check_outputs(archive: xr.Dataset, n_patterns: int | None, n_states: int) -> None:
    """Properties every transformed archive has, whatever the fit (ALGORITHM.md 3)."""
    n_events, n_times = archive.sizes["event"], archive.sizes["time"]
    activation = archive["activation"].values
    assert activation.shape[0::2] == (n_events, n_times)
    if n_patterns is not None:
        assert activation.shape[1] == n_patterns
    assert np.isfinite(activation).all() and (activation >= 0).all()
    state_probability = archive["state_probability"].values
    assert state_probability.shape == (n_events, n_states, n_times)
    np.testing.assert_allclose(state_probability.sum(axis=1), 1.0, rtol=1e-8)
    fingerprint = archive["fingerprint"].values
    assert fingerprint.shape == (n_events, n_states, n_states)
    assert np.isfinite(fingerprint).all() and (fingerprint >= 0).all()
    # fingerprint[i, j] = v[i] sqrt(Q[i, j]) with rows of Q and v summing to 1.
    np.testing.assert_allclose(np.sqrt((fingerprint**2).sum(axis=2)).sum(axis=1), 1.0, rtol=1e-6)


def mean_transition_distance(fingerprint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Hellinger distances between the clusters' mean joint distributions of consecutive
    states (v[i] Q[i, j] = F[i, j]**2 / |F[i, :]|), for every pair of clusters."""
    joint = hellinger_features(fingerprint) ** 2
    means = [joint[labels == c].mean(axis=0) for c in np.unique(labels)]
    return np.array(
        [
            np.sqrt(1.0 - np.sum(np.sqrt(means[a] * means[b])))
            for a in range(len(means))
            for b in range(a + 1, len(means))
        ]
    )


def test_demo_runs_the_whole_pipeline(demo_run):
    from specufex_dask.analysis.datasets import kw1_record, record_spectrograms
    from specufex_dask.inference.diagnostics import states_in_use
    from specufex_dask.ingest.preprocessing import SpectrogramParameters, waveform_to_spectrogram

    outdir, result = ok_demo(demo_run)
    archive_path = outdir / "demo.zarr"
    archive = xr.open_zarr(archive_path)
    assert "ingested 10 of 10 inputs" in result.stdout
    assert "ingested 239 of 239 inputs" in result.stdout
    assert "dashboard http://127.0.0.1:" in result.stderr
    assert "nmf step 150/150: ELBO" in result.stderr or "converged" in result.stderr

    # 10 BAV events and 239 windows of KW1, told apart by their coordinates
    stations = np.array([str(s) for s in archive["station"].values])
    assert archive.sizes["event"] == 249
    assert (stations == "BAV").sum() == 10 and (stations == "KW1").sum() == 239
    assert {str(n) for n in archive["network"].values} == {"NC", "BW"}
    kw1 = stations == "KW1"
    starts = archive["starttime"].values[kw1]
    assert str(starts[0]).startswith("2011-03-31T00:28:00.18")
    assert (np.diff(starts) == np.timedelta64(10, "s")).all()
    # One spectrogram setting for both: that of the KW1 windows of specufex_dask.analysis.datasets.
    params = SpectrogramParameters(
        fs=100.0, window_s=1.0, overlap=0.5, nfft=256, fmin=1.0, fmax=45.0, n_samples=2000
    )
    assert archive.sizes["frequency"] == 113 and archive.sizes["time"] == 39
    import obspy

    from specufex_dask.cli import demo_data_dir

    waveforms = demo_data_dir() / "waveforms"
    for event in ("10633", "24966"):
        (path,) = waveforms.glob(f"*.{event}")
        trace = obspy.read(str(path))[0]
        expected = waveform_to_spectrogram(trace.data, params, 100.0).transformed
        np.testing.assert_allclose(archive["spectrogram"].sel(event=event).values, expected)
    # The bundled miniSEED file holds minutes 28-68 of ObsPy's KW1 record, unchanged.
    samples, _, _ = kw1_record()
    expected, _, _ = record_spectrograms(samples[28 * 6000 : 68 * 6000], 100.0, params, 20, 10)
    np.testing.assert_allclose(archive["spectrogram"].values[kw1], expected, atol=1e-10)

    check_outputs(archive, None, 15)
    # What the demo is for: the fit finds structure.
    n_patterns = archive.sizes["pattern"]
    assert n_patterns < 75  # the NMF pruned
    n_states = states_in_use(archive["state_probability"].values)
    assert n_states >= 4  # >= 1 % of all frames each
    assert f"NMF patterns kept: {n_patterns} of 75" in result.stdout
    assert f"HMM states in use (>= 1 % of all frames): {n_states} of 15" in result.stdout
    assert "distinct fingerprints: " in result.stdout
    # Labels: spectral clustering with the demo's settings (5 clusters, 20 neighbours, no
    # PCA, seed 0) of the idf features of the fingerprints.
    fingerprint = archive["fingerprint"].values
    labels = archive["cluster"].values
    assert archive["cluster"].attrs["transform"] == "idf"
    features = idf_features(fingerprint)
    np.testing.assert_array_equal(labels, spectral_labels(features, 5, n_neighbors=20))
    means = np.array([features[labels == c].mean(axis=0) for c in range(5)])
    inertia = float(((features - means[labels]) ** 2).sum())
    assert inertia == pytest.approx(archive["cluster"].attrs["inertia"], rel=1e-9)
    for cluster, count in enumerate(np.bincount(labels, minlength=5)):
        assert f"  cluster {cluster}: {count} event" in result.stdout
    # The clusters' mean fingerprints differ, well beyond what clusters of the same sizes
    # drawn at random give (measured with spectral clustering: 0.57-0.93 against at most
    # 0.21 for shuffled labels; with k-means 0.44-0.99 against 0.19;
    # the 10-event demo's three clusters were 0.56-0.71 apart, no more than its shuffles).
    distance = mean_transition_distance(fingerprint, labels)
    rng = np.random.default_rng(0)
    shuffled = max(
        mean_transition_distance(fingerprint, rng.permutation(labels)).min() for _ in range(20)
    )
    assert distance.min() > 0.3 and distance.min() > 1.5 * shuffled, (distance, shuffled)
    # The BAV earthquakes sound alike: most of them share a cluster.
    assert np.bincount(labels[~kw1]).max() >= 8

    record = json.loads(archive.attrs["specufex_dask_config"])
    assert record["spectrograms"]["nfft"] == 256 and record["nmf"]["steps"] == 150
    assert record["hmm"]["num_state"] == 15 and record["clustering"]["n_clusters"] == 5
    assert record["clustering"]["transform"] == "idf"
    # Event figures: each cluster's member nearest its mean, and a BAV earthquake.
    from specufex_dask.cli import demo_events

    shown = demo_events(archive)
    position = {str(event): i for i, event in enumerate(archive["event"].values)}
    assert {labels[position[event]] for event in shown} == {0, 1, 2, 3, 4}
    assert {stations[position[event]] for event in shown} == {"BAV", "KW1"}
    assert len(shown) <= 6
    figures = sorted(path.name for path in (outdir / "figures").iterdir())
    assert figures == sorted(
        ["nmf_dictionary.png", "hmm_emission.png", "fingerprints.png", "clusters.png"]
        + ["cluster_timeline.png", "cluster_examples.png"]
        + [f"event_{event.replace(':', '_')}.png" for event in shown]
    )
    for name in figures:
        assert (outdir / "figures" / name).read_bytes()[:8] == PNG_MAGIC

    text = ok(run_cli("info", archive_path)).stdout
    assert "events: 249\n" in text
    assert "256 events per shard file (1 shard)" in text
    assert "model: " in text and "model: none" not in text
    assert "fingerprint: 249 event x 15 state x 15 next_state" in text


def ok_demo(demo_run):
    outdir, result = demo_run
    ok(result)
    return outdir, result


def test_demo_refuses_to_overwrite(demo_run, capsys):
    outdir, _ = ok_demo(demo_run)
    code, _, err = call_main(capsys, "demo", outdir)
    assert code == 1
    assert "already exists; pass --overwrite" in err


def test_run_then_transform_on_a_running_scheduler(demo_run, tmp_path, scheduler, capsys):
    outdir, _ = ok_demo(demo_run)
    archive_path = tmp_path / "run.zarr"
    shutil.copytree(outdir / "demo.zarr", archive_path)
    settings = ["--num-pat", "8", "--num-state", "4", "--nmf-steps", "5", "--hmm-steps", "5"]
    result = ok(run_cli("run", archive_path, *settings, "--seed", "3", "--scheduler", scheduler))
    assert f"Dask: {scheduler}" in result.stderr
    archive = xr.open_zarr(archive_path)
    check_outputs(archive, None, 4)
    assert archive.sizes["pattern"] <= 8
    record = json.loads(archive.attrs["specufex_dask_config"])
    assert record["nmf"]["num_pat"] == 8 and record["fit"]["random_state"] == 3
    fingerprint = archive["fingerprint"].values
    # The stored model transforms the same spectrograms to the same fingerprints.
    code, _, err = call_main(capsys, "transform", archive_path, "--scheduler", scheduler)
    assert code == 0, err
    np.testing.assert_allclose(xr.open_zarr(archive_path)["fingerprint"].values, fingerprint)


def _config_of(*args: str):
    from specufex_dask.cli import build_parser, effective_config

    return effective_config(build_parser().parse_args(list(args)))


def test_tol_none_on_the_command_line_reaches_the_model(tmp_path):
    from specufex_dask.cli import Reporter, make_pipeline

    assert _config_of("fit", "x.zarr").nmf.tol == 1e-4
    assert _config_of("fit", "x.zarr", "--tol", "none").nmf.tol is None
    config_file = tmp_path / "run.yaml"
    config_file.write_text("nmf: {tol: 0.01, steps: 70}\nhmm: {steps: 80}\n")
    from_file = _config_of("run", "x.zarr", "--config", str(config_file))
    assert (from_file.nmf.tol, from_file.nmf.steps, from_file.hmm.steps) == (0.01, 70, 80)
    # flags given as none / auto override the file's values with None
    flags = ("--tol", "none", "--nmf-steps", "auto", "--hmm-steps", "none")
    config = _config_of("run", "x.zarr", "--config", str(config_file), *flags)
    assert (config.nmf.tol, config.nmf.steps, config.hmm.steps) == (None, None, None)
    model = make_pipeline(config, False, Reporter(quiet=True))
    assert (model.tol, model.nmf_steps, model.hmm_steps) == (None, None, None)
    model = make_pipeline(_config_of("fit", "x.zarr", "--hmm-steps", "9"), False, Reporter())
    assert (model.tol, model.nmf_steps, model.hmm_steps) == (1e-4, None, 9)


def test_progress_lines_show_the_states_in_use_and_the_stop():
    from specufex_dask.cli import format_progress

    nmf = {"step": 3, "total": 200, "elbo": -1.5e5, "converged": False, "n_patterns": 31}
    assert format_progress("nmf", nmf, 200) == "nmf step 3/200: ELBO -150000, 31 patterns"
    hmm = {"step": 9, "total": 200, "elbo": 2.5e6, "converged": True, "n_states": 12}
    assert format_progress("hmm", hmm, 200) == (
        "hmm step 9/200: ELBO 2.5e+06, 12 states in use, converged"
    )


def test_a_long_fit_prints_the_step_where_it_stopped():
    import io

    from specufex_dask.cli import Reporter

    stream = io.StringIO()
    reporter = Reporter(stream=stream)
    for step in range(1, 58):
        info = {"step": step, "total": 1000, "elbo": 1.0, "n_states": 4}
        reporter.progress("hmm", {**info, "converged": step == 57})
    lines = stream.getvalue().splitlines()
    # every 20th of 1000 steps, and the last one, where the stage converged
    assert [line.split(":")[0] for line in lines] == [
        "hmm step 20/1000", "hmm step 40/1000", "hmm step 57/1000",
    ]  # fmt: skip
    assert lines[-1].endswith("4 states in use, converged")


def test_the_fitted_summary_tells_the_steps_run():
    from types import SimpleNamespace

    from specufex_dask.cli import _fitted_summary

    model = SimpleNamespace(
        nmf_=SimpleNamespace(num_pat=31), hmm_=SimpleNamespace(num_state=15),
        n_steps_={"nmf": 130, "hmm": 1000}, converged_={"nmf": True, "hmm": False},
    )  # fmt: skip
    assert _fitted_summary(model) == (
        "NMF dictionary of 31 patterns (130 steps, converged); HMM of 15 states (1000 steps)"
    )
