"""The command line: `python -m align ...` JSON output, tables, exit codes and one-line
errors. Known answers are computed here independently (numpy/scipy on the raw files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from align.cli import main

from tests.test_evaluate import accuracy_dot, raw_things_triplets, spose


def run_cli(*args: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALIGN_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "align", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not line.startswith("align: warning:")
    ]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("align: error:")
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # never read or write the user's ~/.cache/align from a test
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path / "align-cache"))


# -- align score FEATURES.npy DATASET --json ------------------------------------------


def test_score_features_on_things_prints_the_odd_one_out_keys(
    data_dir: Path, tmp_path: Path, cache_dir: Path
) -> None:
    X = spose(data_dir)
    path = tmp_path / "spose.npy"
    np.save(path, X)
    proc = run_cli(
        "score", str(path), "things", "--data-dir", str(data_dir), "--similarity", "dot",
        "--json", cache_dir=cache_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one JSON object on stdout
    o = out["metrics"]["odd_one_out"]
    assert set(o) >= {"accuracy", "ci", "ceiling", "normalized", "n_triplets"}
    assert o["accuracy"] == pytest.approx(accuracy_dot(X, raw_things_triplets(data_dir)))
    assert o["ci"][0] < o["accuracy"] < o["ci"][1]
    assert o["n_triplets"] == 20000
    assert out["model"] == f"features:{path}" and out["dataset"] == "things"
    assert out["provenance"]["options"]["similarity"] == "dot"


def upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(m.shape[0], 1)]


def test_score_features_on_mur92_prints_rsa_and_its_noise_ceiling(
    data_dir: Path, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    X = np.random.default_rng(0).normal(size=(92, 16))
    path = tmp_path / "f.npy"
    np.save(path, X)
    code = main(["score", str(path), "mur92", "--data-dir", str(data_dir), "--json",
                 "-O", "n_bootstrap=0"])  # fmt: skip
    assert code == 0
    rsa = json.loads(capsys.readouterr().out)["metrics"]["rsa"]
    # independent: the 16 subjects' RDMs from the raw file, in the file's stimulus order
    subjects = np.load(data_dir / "mur92" / "behav_rdms_92_16subjects.npy")
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    model_rdm = 1 - U @ U.T
    # headline: mean over subjects (the noise ceiling's scale); group: the subject mean
    expected = np.mean([scipy.stats.spearmanr(upper(model_rdm), upper(m))[0] for m in subjects])
    assert rsa["spearman"] == pytest.approx(expected, abs=1e-9)
    group = scipy.stats.spearmanr(upper(model_rdm), upper(subjects.mean(axis=0)))[0]
    assert rsa["group"]["spearman"] == pytest.approx(group, abs=1e-9)
    vec = np.array([upper(m) for m in subjects])
    lower = np.mean(
        [scipy.stats.spearmanr(vec[k], np.delete(vec, k, 0).mean(0))[0] for k in range(16)]
    )
    upper_b = np.mean([scipy.stats.spearmanr(vec[k], vec.mean(0))[0] for k in range(16)])
    assert rsa["noise_ceiling"]["lower"] == pytest.approx(lower, abs=1e-9)
    assert rsa["noise_ceiling"]["upper"] == pytest.approx(upper_b, abs=1e-9)


@pytest.fixture
def planted_folder(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A folder dataset of 24 synthetic images with triplets simulated from a planted
    embedding, and features that are a linear map of it (so a probe can learn)."""
    from PIL import Image

    folder = tmp_path / "planted"
    images = folder / "images"
    images.mkdir(parents=True)
    for i in range(24):
        Image.new("RGB", (4, 4), (i * 10, 0, 0)).save(images / f"s{i:02d}.png")
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(24, 3))
    lines = ["# convention: odd-one-out", "# refer_by: index"]
    for _ in range(600):
        a, b, c = rng.choice(24, 3, replace=False)
        sims = {(a, b): Z[a] @ Z[b], (a, c): Z[a] @ Z[c], (b, c): Z[b] @ Z[c]}
        (x, y) = max(sims, key=sims.get)  # the most similar pair; the third is odd
        odd = ({a, b, c} - {x, y}).pop()
        lines.append(f"{x},{y},{odd}")
    (folder / "triplets.csv").write_text("\n".join(lines) + "\n")
    features = Z @ rng.normal(size=(3, 6)) + 0.01 * rng.normal(size=(24, 6))
    return folder, features


def test_score_with_probe_prints_the_probe_keys(
    planted_folder, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, X = planted_folder
    path = tmp_path / "planted.npy"
    np.save(path, X)
    code = main(["score", str(path), str(folder), "--probe", "--json",
                 "-O", "lambdas=[0.01]", "-O", "n_bootstrap=0"])  # fmt: skip
    assert code == 0
    probe = json.loads(capsys.readouterr().out)["metrics"]["probe"]
    assert set(probe) >= {"accuracy", "cross_entropy", "lambda", "folds"}
    assert probe["lambda"] == 0.01 and len(probe["folds"]) == 3
    # the same numbers as the library's own cross-validation on the same data
    import align
    from align.metrics.probe import cross_validate_probe

    ds = align.load_dataset(str(folder))
    direct = cross_validate_probe(X, ds.triplets, lambdas=[0.01]).to_dict()
    assert probe["accuracy"] == pytest.approx(direct["accuracy"])
    assert probe["cross_entropy"] == pytest.approx(direct["cross_entropy"])


def test_probe_command_writes_a_thingsvision_transform(
    planted_folder, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, X = planted_folder
    path = tmp_path / "planted.npy"
    np.save(path, X)
    out = tmp_path / "transform.npz"
    code = main(["probe", str(path), str(folder), "-o", str(out), "--lambdas", "0.01", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["output"] == str(out)
    with np.load(out) as f:
        assert {"weights", "mean", "std"} <= set(f.files)
        assert f["weights"].shape == (6, 6)


def test_human_table_shows_the_score(
    data_dir: Path, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spose.npy"
    np.save(path, spose(data_dir))
    assert main(["score", str(path), "things", "--similarity", "dot", "-O", "n_bootstrap=0"]) == 0
    out = capsys.readouterr().out
    assert "odd_one_out" in out and "accuracy" in out and "0.6425" in out


def test_score_says_it_ran_embedded_and_the_second_run_is_a_cache_hit(
    data_dir: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALIGN_SERVER", raising=False)
    path = tmp_path / "spose.npy"
    np.save(path, spose(data_dir))
    args = ("score", str(path), "things", "--data-dir", str(data_dir), "-O", "n_bootstrap=0")
    first = run_cli(*args, "--json", cache_dir=cache_dir)
    second = run_cli(*args, "--json", cache_dir=cache_dir)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["provenance"]["backend"] == b["provenance"]["backend"] == "embedded"
    assert (a["provenance"]["cache"], b["provenance"]["cache"]) == ("miss", "hit")
    assert a["metrics"] == b["metrics"]
    assert "scored embedded" in first.stderr and "cache hit" in second.stderr


def test_score_with_an_unreachable_server_fails_naming_it(
    data_dir: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("grpc")
    from tests.ports import free_port

    path = tmp_path / "spose.npy"
    np.save(path, spose(data_dir))
    target = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("ALIGN_SERVER", target)  # the server is used, not the embedded backend
    proc = run_cli("score", str(path), "things", "--json", cache_dir=cache_dir)
    assert_one_line_error(proc, target)
    embedded = run_cli(
        "score", str(path), "things", "--embedded", "--json", "-O", "n_bootstrap=0",
        cache_dir=cache_dir,
    )  # fmt: skip
    assert embedded.returncode == 0, embedded.stderr
    assert json.loads(embedded.stdout)["provenance"]["backend"] == "embedded"


# -- other commands ----------------------------------------------------------------------


def test_datasets_lists_what_is_present_and_where_it_looked(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datasets", "--data-dir", str(data_dir), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["things48"]["present"] and rows["mur92"]["present"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["datasets", "--data-dir", str(empty)]) == 0
    out = capsys.readouterr().out
    assert "things48" in out and str(empty) in out.replace("\n", "")


def test_models_lists_the_registered_models(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("align.models")
    assert main(["models", "timm/tf_efficientnet_lite*", "--json"]) == 0
    ids = [m["id"] for m in json.loads(capsys.readouterr().out)]
    assert "timm/tf_efficientnet_lite0" in ids


# -- errors: one line on stderr, exit code 2 ---------------------------------------------


def test_unknown_model_exits_2_with_close_matches(data_dir: Path, cache_dir: Path) -> None:
    proc = run_cli("score", "timm/tf_efficientnet_lite", "things", cache_dir=cache_dir)
    assert_one_line_error(proc, "unknown model", "tf_efficientnet_lite0")


def test_missing_dataset_files_say_where_to_put_and_get_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    X = tmp_path / "f.npy"
    np.save(X, np.ones((48, 2)))
    assert main(["score", str(X), "things48", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("align: error:") and "\n" not in err
    assert str(tmp_path / "nowhere") in err  # where it looked
    assert "ALIGN_DATA_DIR" in err


def test_features_with_the_wrong_row_count_name_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    X = tmp_path / "f.npy"
    np.save(X, np.ones((10, 2)))
    assert main(["score", str(X), "things"]) == 2
    err = capsys.readouterr().err
    assert "features" in err and "1854 rows" in err


def test_a_features_file_that_is_not_there_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["score", str(tmp_path / "absent.npy"), "things"]) == 2
    assert "absent.npy" in capsys.readouterr().err


def test_a_bad_option_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X = tmp_path / "f.npy"
    np.save(X, np.ones((1854, 2)))
    assert main(["score", str(X), "things", "-O", "nboot=3"]) == 2
    assert "nboot" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "score" in capsys.readouterr().err
