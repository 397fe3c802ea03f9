"""align.datasets on the real human data (shared/data, ALIGN_DATA_DIR).

Known answers come from independent code in this file (plain loops, csv module) or from
published / provenance numbers, never from the loader's own output.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
from align.datasets import (
    Dataset,
    list_datasets,
    load_dataset,
    load_spose_embedding,
    load_vice_concept_labels,
    load_vice_embedding,
)
from align.digest import digest_file
from align.errors import DataMissingError, NotFoundError
from scipy.io import loadmat

PACKAGE_DATA = Path(__import__("align").__file__).parent / "data"


def _things(data_dir: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing yo-yo image
        return load_dataset("things", data_dir)


def _concepts(data_dir: Path) -> list[str]:
    with open(data_dir / "things" / "things_concepts.tsv", newline="", encoding="utf-8") as f:
        return [row["uniqueID"] for row in csv.DictReader(f, delimiter="\t")]


def _homonyms(data_dir: Path) -> list[int]:
    s = [int(x) for x in (data_dir / "things" / "sortindex").read_text().split()]
    return [i for i, v in enumerate(s) if v != i]


def test_shipped_things_files_are_the_data_dir_files(data_dir: Path) -> None:
    for name in ("test_triplets.csv", "sortindex"):
        assert digest_file(PACKAGE_DATA / "things" / name) == digest_file(
            data_dir / "things" / name
        )


def test_things_loads_without_a_data_dir(tmp_path: Path) -> None:
    ds = load_dataset("things", tmp_path)  # empty folder: words + triplets are shipped
    assert ds.kind == "triplets" and ds.image_paths is None
    assert ds.triplets is not None and len(ds.triplets) == 20000
    assert ds.words is not None and ds.words[0] == "aardvark"


def test_the_21_homonyms_map_raw_to_concept_order(data_dir: Path) -> None:
    # Independent model of the raw order: the sorted image file names "<uniqueID>_NN.jpg".
    # (PROVENANCE says "Python-sorted uniqueIDs"; that differs for ice / ice-cream_cone,
    # since "ice" < "ice-cream_cone" but "ice_" > "ice-".)
    uids = _concepts(data_dir)
    raw_order = sorted(uids, key=lambda u: u + "_")
    homonyms = _homonyms(data_dir)
    assert len(homonyms) == 21
    ds = _things(data_dir)
    assert ds.triplets is not None
    raw = np.loadtxt(data_dir / "things" / "test_triplets.csv", dtype=np.int64)
    # every raw index that appears maps to the concept with the same uniqueID
    for r, c in zip(raw[:, :3].ravel() - 1, _stored_as_shown(raw, ds), strict=True):
        assert raw_order[r] == ds.stimulus_ids[c] == uids[c]
    touching = np.isin(ds.triplets, homonyms).any(axis=1)
    assert touching.sum() > 500  # the homonym rows are really exercised


def _stored_as_shown(raw: np.ndarray, ds: Dataset) -> list[int]:
    # the loader's triplets back in the order shown (positions 1..3), via the odd column
    out: list[int] = []
    assert ds.triplets is not None
    for row, stored in zip(raw, ds.triplets, strict=True):
        odd = int(row[3]) - 1
        shown = list(stored[:2])
        shown.insert(odd, stored[2])
        out.extend(int(x) for x in shown)
    return out


def test_triplets_match_the_independently_derived_concept_order_file(data_dir: Path) -> None:
    ds = _things(data_dir)
    assert ds.triplets is not None and ds.subjects is not None
    with open(data_dir / "things" / "test_triplets_things_concepts_order0.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ds.triplets)
    homonyms = set(_homonyms(data_dir))
    n_homonym_rows = 0
    for row, stored, subject in zip(rows, ds.triplets, ds.subjects, strict=True):
        objs = [int(row["obj1"]), int(row["obj2"]), int(row["obj3"])]
        odd = int(row["odd_one_out_position_1to3"]) - 1
        expected = [o for p, o in enumerate(objs) if p != odd] + [objs[odd]]
        assert stored.tolist() == expected
        assert subject == int(row["subject_id"])
        n_homonym_rows += bool(homonyms & set(objs))
    assert n_homonym_rows == 594


def test_vice_mapping_is_semantically_right_for_the_homonyms(data_dir: Path) -> None:
    # VICE (raw file order, mapped) and SPoSE (concept order) are two different human
    # embeddings: a homonym's VICE similarity profile must match its own SPoSE profile
    # better than that of any other homonym (chicken_wire vs chicken1 ...).
    vice, spose = load_vice_embedding(data_dir), load_spose_embedding(data_dir)
    assert vice.shape == (1854, 42) and spose.shape == (1854, 66)
    homonyms = _homonyms(data_dir)
    others = np.setdiff1d(np.arange(1854), homonyms)

    def profiles(e: np.ndarray) -> np.ndarray:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        return (e[homonyms] @ e[others].T).astype(np.float64)

    corr = np.corrcoef(profiles(vice), profiles(spose))[:21, 21:]
    assert (corr.argmax(axis=1) == np.arange(21)).all()
    assert np.diag(corr).min() > 0.8


def test_noise_ceiling_set_counts(data_dir: Path) -> None:
    ds = _things(data_dir)
    assert ds.triplets is not None and ds.subjects is not None
    assert ds.triplets.shape == (20000, 3) and ds.triplets.dtype == np.int64
    assert len({tuple(sorted(t)) for t in ds.triplets.tolist()}) == 1000
    assert len(set(ds.subjects.tolist())) == 325


def test_spose_zero_shot_accuracy_on_the_mapped_triplets(data_dir: Path) -> None:
    ds = _things(data_dir)
    e = load_spose_embedding(data_dir)
    assert ds.triplets is not None
    correct = 0
    for a, b, c in ds.triplets.tolist():  # plain loop: dot products, odd one in column 2
        s_ab, s_ac, s_bc = e[a] @ e[b], e[a] @ e[c], e[b] @ e[c]
        correct += s_ab > s_ac and s_ab > s_bc
    assert correct / len(ds.triplets) == pytest.approx(0.643, abs=0.0015)  # PROVENANCE 64.3%


def test_things_images_match_the_pattern_and_count_the_missing(data_dir: Path) -> None:
    with pytest.warns(UserWarning, match=r"1 of 1854 images missing .*yo-yo"):
        ds = load_dataset("things", data_dir)
    assert ds.image_paths is not None
    paths = dict(zip(ds.stimulus_ids, ds.image_paths, strict=True))
    assert paths["bib"] is not None and paths["bib"].name == "bib_02s.jpg"
    assert paths["jukebox"] is not None and paths["jukebox"].name == "jukebox_02s.jpg"
    assert paths["camera_lens"] is not None and paths["camera_lens"].name.startswith("camera_lens_")
    assert paths["yo-yo"] is None
    assert sum(p is None for p in ds.image_paths) == 1


def test_missing_image_warning_counts_touching_triplets(tmp_path: Path, data_dir: Path) -> None:
    uids = _concepts(data_dir)
    gone = {"aardvark", "zucchini", "chicken_wire"}
    for i, uid in enumerate(uids):
        if uid not in gone:
            (tmp_path / f"{uid}_0{1 + i % 2}{'bs'[i % 2]}.jpg").write_bytes(b"")
    rows = np.loadtxt(
        data_dir / "things" / "test_triplets_things_concepts_order0.csv",
        delimiter=",",
        skiprows=1,
        dtype=np.int64,
    )
    gone_idx = {uids.index(u) for u in gone}
    expected = sum(bool(gone_idx & set(r[:3].tolist())) for r in rows)
    assert expected > 0
    with pytest.warns(UserWarning, match=rf"3 of 1854 images missing.* {expected} of 20000"):
        ds = load_dataset("things", data_dir, images=tmp_path)
    dropped = ds.without_missing_images()
    assert dropped.triplets is not None and len(dropped.triplets) == 20000 - expected
    assert dropped.digest != ds.digest


def test_vice_concept_labels_fall_back_to_indices(data_dir: Path) -> None:
    labels = load_vice_concept_labels(data_dir)
    assert len(labels) == 42 and labels[0] == "0" and labels[41] == "41"


def test_things48_rdm_agrees_with_spose(data_dir: Path) -> None:
    ds = load_dataset("things48", data_dir)
    assert ds.kind == "rdm" and ds.matrices is not None and ds.matrices.shape == (1, 48, 48)
    rdm = loadmat(data_dir / "things48" / "RDM48_triplet.mat")["RDM48_triplet"]
    np.testing.assert_array_equal(ds.matrices[0], rdm)
    uids = _concepts(data_dir)
    e = load_spose_embedding(data_dir)[[uids.index(u) for u in ds.stimulus_ids]]
    iu = np.triu_indices(48, 1)
    r = np.corrcoef(-rdm[iu], (e @ e.T)[iu])[0, 1]
    assert r == pytest.approx(0.883, abs=0.001)  # PROVENANCE
    assert ds.stimulus_ids[:2] == ("pizza", "beaver")
    assert ds.image_paths is not None and all(p is not None and p.is_file() for p in ds.image_paths)


def test_mur92_has_16_symmetric_rdms_equal_to_the_mat_file(data_dir: Path) -> None:
    ds = load_dataset("mur92", data_dir)
    assert ds.matrices is not None and ds.matrices.shape == (16, 92, 92)
    np.testing.assert_array_equal(ds.matrices, ds.matrices.transpose(0, 2, 1))
    struct = loadmat(data_dir / "mur92" / "92_behavRDMs.mat")["rdms_behav_92"]
    for s in range(16):
        np.testing.assert_array_equal(ds.matrices[s], struct[0, s]["RDM"])
    assert ds.stimulus_ids[0] == "01" and ds.stimulus_ids[-1] == "92"
    assert ds.image_paths is not None and ds.image_paths[0] is not None
    assert ds.image_paths[0].name == "01.png"


def test_mur92_reads_the_mat_file_when_the_npy_is_absent(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mur92"
    folder.mkdir()
    (folder / "92_behavRDMs.mat").symlink_to(data_dir / "mur92" / "92_behavRDMs.mat")
    (folder / "images92").symlink_to(data_dir / "mur92" / "images92")
    from_mat = load_dataset("mur92", tmp_path)
    assert from_mat.digest == load_dataset("mur92", data_dir).digest


def test_peterson_animals_is_a_similarity_matrix_with_two_halves(data_dir: Path) -> None:
    ds = load_dataset("peterson-animals", data_dir)
    assert ds.matrix_kind == "similarity" and ds.matrices is not None
    assert ds.matrices.shape == (1, 120, 120) and ds.image_paths is None
    assert np.diag(ds.matrices[0]).tolist() == [10.0] * 120
    halves = load_dataset("peterson-animals/halves", data_dir)
    assert halves.matrices is not None and halves.matrices.shape == (2, 120, 120)
    iu = np.triu_indices(120, 1)
    r = np.corrcoef(halves.matrices[0][iu], halves.matrices[1][iu])[0, 1]
    assert r == pytest.approx(0.91, abs=0.01)  # PROVENANCE: split halves r = 0.91


def test_peterson_images_from_a_user_folder(data_dir: Path, tmp_path: Path) -> None:
    ids = load_dataset("peterson-animals", data_dir).stimulus_ids
    for k, i in enumerate(ids[:-1]):
        (tmp_path / (f"{int(i):03d}.jpg" if k % 2 else f"{i}.png")).write_bytes(b"")
    with pytest.warns(UserWarning, match="1 of 120 images missing"):
        ds = load_dataset("peterson-animals", data_dir, images=tmp_path)
    assert ds.image_paths is not None and ds.image_paths[-1] is None
    assert all(
        p is not None and int(p.stem) == int(i)
        for p, i in zip(ds.image_paths[:-1], ids[:-1], strict=True)
    )


# published sizes of the word-similarity sets (VERB-143's file holds 144 pairs)
WORDSIM_PAIRS = {
    "men": 3000, "simlex999": 999, "simverb3500": 3500, "ws353": 353, "ws353-rel": 252,
    "ws353-sim": 203, "rw": 2034, "mturk287": 287, "mturk771": 771, "rg65": 65, "mc30": 30,
    "yp130": 130, "verb143": 144,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(WORDSIM_PAIRS))
def test_wordsim_pair_counts(name: str, data_dir: Path) -> None:
    ds = load_dataset(f"wordsim/{name}", data_dir)
    assert ds.kind == "wordsim" and ds.pairs is not None and ds.pair_scores is not None
    assert len(ds.pairs) == len(ds.pair_scores) == WORDSIM_PAIRS[name]
    assert set(ds.stimulus_ids) == {w for p in ds.pairs for w in p}
    assert len(set(ds.stimulus_ids)) == len(ds.stimulus_ids) and ds.words == ds.stimulus_ids


def test_wordsim_matches_the_data_dir_files(data_dir: Path) -> None:
    ds = load_dataset("wordsim/simlex999", data_dir)
    with open(data_dir / "wordsim" / "simlex999.txt") as f:  # gensim's copy, own format
        rows = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    assert ds.pairs == tuple((a, b) for a, b, _ in rows)
    np.testing.assert_allclose(ds.pair_scores, [float(s) for *_, s in rows])


def test_list_datasets_reports_presence_and_where_it_looked(data_dir: Path, tmp_path: Path) -> None:
    here = {s.id: s for s in list_datasets(data_dir)}
    assert all(here[i].present for i in ("things", "things48", "mur92", "peterson-animals"))
    assert here["things"].searched == "explicit" and here["mur92"].n_stimuli == 92
    assert not here["things/full"].present
    empty = {s.id: s for s in list_datasets(tmp_path)}
    assert empty["things"].present and "things/images (optional)" in empty["things"].missing
    assert not empty["things48"].present
    assert "things48/RDM48_triplet.mat" in empty["things48"].missing
    assert "cvpr_perturbations" in empty["things48"].where_to_get
    assert empty["wordsim/men"].present and empty["wordsim/men"].n_stimuli == 751


def test_data_dir_resolution_order(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALIGN_DATA_DIR", str(tmp_path))
    status = {s.id: s for s in list_datasets()}
    assert status["mur92"].searched == "ALIGN_DATA_DIR" and not status["mur92"].present
    assert {s.id: s for s in list_datasets(data_dir)}["mur92"].present  # explicit wins
    monkeypatch.delenv("ALIGN_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    default = {s.id: s for s in list_datasets()}["mur92"]
    assert default.searched == "default"
    assert Path(default.data_dir) == (tmp_path / ".." / "shared" / "data").resolve()


def test_missing_files_say_where_we_looked_and_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError) as info:
        load_dataset("things48", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "explicit" in message and "cvpr_perturbations" in message
    with pytest.raises(DataMissingError, match="spose_embedding_66d"):
        load_spose_embedding(tmp_path)


def test_unknown_dataset_suggests_close_matches() -> None:
    with pytest.raises(NotFoundError, match="did you mean 'things'"):
        load_dataset("thing")
    with pytest.raises(NotFoundError, match="wordsim/simlex999"):
        load_dataset("wordsim/simlex")


def test_digest_depends_on_judgments_not_on_the_source(data_dir: Path, tmp_path: Path) -> None:
    a, b = load_dataset("things", tmp_path), _things(data_dir)
    assert a.digest == b.digest and len(a.digest) == 64
    assert load_dataset("wordsim/ws353").digest != load_dataset("wordsim/ws353-sim").digest
