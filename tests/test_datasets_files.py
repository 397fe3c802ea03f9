"""File formats of align.datasets: THINGS triplet formats, user folders, malformed input.

Every malformed file must raise InvalidInputError naming the file and the line; every
valid row must come out (rows in == rows out).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from align.datasets import load_dataset
from align.datasets.io import load_mat
from align.datasets.things import read_things_triplets
from align.datasets.wordsim import read_pairs
from align.errors import DataMissingError, InvalidInputError

SHIPPED = Path(__import__("align").__file__).parent / "data" / "things" / "test_triplets.csv"


def _raw_rows() -> np.ndarray:
    return np.loadtxt(SHIPPED, dtype=np.int64)


def _sortindex() -> np.ndarray:
    return np.loadtxt(SHIPPED.parent / "sortindex", dtype=np.int64)


def _expected_concept_triplets(rows: np.ndarray) -> np.ndarray:
    # independent: concept c has raw index sortindex[c]; build the inverse with a loop
    inverse = {int(r): c for c, r in enumerate(_sortindex())}
    out = []
    for i, j, k, choice, _ in rows.tolist():
        shown = [inverse[i - 1], inverse[j - 1], inverse[k - 1]]
        odd = shown.pop(choice - 1)
        out.append([*shown, odd])
    return np.asarray(out, dtype=np.int64)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- THINGS triplet formats -------------------------------------------------------------


def test_things_data_csv_format(tmp_path: Path) -> None:
    rows = _raw_rows()[:500]
    expected = _expected_concept_triplets(rows)
    # THINGS-data CSV: 1-based CONCEPT order, choice = position of the odd one, header
    lines = ["image1\timage2\timage3\tchoice\tRT\tnoise_ceiling\tsubject_id\tHIT_nr"]
    inverse = np.argsort(_sortindex())
    for i, j, k, choice, subject in rows.tolist():
        a, b, c = (int(inverse[x - 1]) + 1 for x in (i, j, k))
        lines.append(f"{a}\t{b}\t{c}\t{choice}\t1234.5\t0\tW{subject}\t7")
    path = _write(tmp_path / "triplets_large_final_correctednc_correctedorder.csv",
                  "\n".join(lines) + "\n")  # fmt: skip
    ds = load_dataset("things", tmp_path, triplets=path)
    np.testing.assert_array_equal(ds.triplets, expected)
    assert ds.subjects is not None and len(set(ds.subjects.tolist())) == len(set(rows[:, 4]))


def test_things_data_folder_convention(tmp_path: Path) -> None:
    folder = tmp_path / "things" / "triplet_dataset"
    folder.mkdir(parents=True)
    expected = _expected_concept_triplets(_raw_rows()[:300])
    np.savetxt(folder / "trainset.txt", expected, fmt="%d")  # 0-based, odd one last
    np.savetxt(folder / "validationset.txt", expected[:10].astype(float))  # floats "12.0"
    train = load_dataset("things/train", tmp_path)
    np.testing.assert_array_equal(train.triplets, expected)
    np.testing.assert_array_equal(load_dataset("things/validation", tmp_path).triplets,
                                  expected[:10])  # fmt: skip
    with pytest.raises(DataMissingError, match=r"osf\.io/f5rn6"):
        load_dataset("things/full", tmp_path)


def test_npy_triplets_in_concept_and_raw_order(tmp_path: Path) -> None:
    expected = _expected_concept_triplets(_raw_rows()[:200])
    np.save(tmp_path / "t.npy", expected)
    assert np.array_equal(read_things_triplets(tmp_path / "t.npy")[0], expected)
    raw = np.loadtxt(SHIPPED, dtype=np.int64)[:200]
    raw_stored = np.array([[*np.delete(r[:3], r[3] - 1), r[r[3] - 1]] for r in raw]) - 1
    np.save(tmp_path / "raw.npy", raw_stored)
    t, _ = read_things_triplets(tmp_path / "raw.npy", order="raw")
    np.testing.assert_array_equal(t, expected)


def test_raw_things_file_rows_in_equal_rows_out(tmp_path: Path) -> None:
    text = SHIPPED.read_text().splitlines()
    path = _write(tmp_path / "t.csv", "# comment\n\n" + "\n".join(text[:50]) + "\n\n")
    t, subjects = read_things_triplets(path)
    assert len(t) == 50 and subjects is not None and len(subjects) == 50


@pytest.mark.parametrize(
    ("line3", "message"),
    [
        ("128\t1107\t734\t1", r"line 3: has 4 columns \(expected 5"),
        ("128\tx\t734\t1\t272", r"line 3: obj_j is 'x', not an integer"),
        ("128\t1855\t734\t1\t272", r"line 3: object index 1855 is out of range"),
        ("0\t5\t734\t1\t272", r"line 3: object index 0 is out of range"),
        ("128\t1107\t734\t4\t272", r"line 3: choice \(odd-one-out position\) 4 is out of range"),
    ],
)
def test_malformed_raw_things_file(tmp_path: Path, line3: str, message: str) -> None:
    good = "1\t2\t3\t1\t9\n4\t5\t6\t2\t9\n"
    path = _write(tmp_path / "bad.csv", good + line3 + "\n")
    with pytest.raises(InvalidInputError, match=rf"bad\.csv, {message}"):
        read_things_triplets(path)


def test_malformed_things_data_csv(tmp_path: Path) -> None:
    head = "image1\timage2\timage3\tchoice\tsubject_id\n"
    path = _write(tmp_path / "a.csv", head + "1\t2\t3\t1\tw\n1\t2\tthree\t1\tw\n")
    with pytest.raises(InvalidInputError, match=r"a\.csv, line 3: image3 is 'three'"):
        read_things_triplets(path)
    path = _write(tmp_path / "b.csv", head + "1\t2\t3\t1\tw\n1\t2\t3\t0\tw\n")
    with pytest.raises(InvalidInputError, match=r"b\.csv, line 3: choice .* 0 is out of range"):
        read_things_triplets(path)
    path = _write(tmp_path / "c.csv", "image1\timage2\tchoice\n1\t2\t1\n")
    with pytest.raises(InvalidInputError, match=r"c\.csv, line 1: header lacks \['image3'\]"):
        read_things_triplets(path)


def test_malformed_zero_based_and_npy_triplets(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.txt", "0 1 2\n3 4 5\n6 7 1854\n")
    with pytest.raises(InvalidInputError, match=r"train\.txt, line 3: object index 1854"):
        read_things_triplets(path)
    path = _write(tmp_path / "t2.txt", "0 1 2\n3 4 5\n6 7\n")
    with pytest.raises(InvalidInputError, match=r"t2\.txt, line 3: has 2 columns"):
        read_things_triplets(path)
    np.save(tmp_path / "t.npy", np.array([[0, 1, 2], [0, 1, -1]]))
    with pytest.raises(InvalidInputError, match=r"t\.npy, row 1 .*out of range"):
        read_things_triplets(tmp_path / "t.npy")
    np.save(tmp_path / "w.npy", np.zeros((4, 2), dtype=int))
    with pytest.raises(InvalidInputError, match=r"w\.npy: has shape \(4, 2\)"):
        read_things_triplets(tmp_path / "w.npy")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    for name in ("empty.csv", "comments.csv"):
        path = _write(tmp_path / name, "" if name == "empty.csv" else "# only\n\n")
        with pytest.raises(InvalidInputError, match=rf"{name}: is empty"):
            read_things_triplets(path)


# --- user folders -------------------------------------------------------------------------


def _image_folder(root: Path, names: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    for n in names:
        (root / "images" / n).write_bytes(b"\x89PNG")
    return root


NAMES = ["cat.png", "dog.jpg", "apple.jpg", "bus.png", "eel.jpeg"]
ORDER = sorted(Path(n).stem for n in sorted(NAMES))  # stimulus order: sorted file names


@pytest.mark.parametrize("convention", ["odd-one-out", "anchor"])
def test_folder_triplets_round_trip_by_stem(tmp_path: Path, convention: str) -> None:
    rng = np.random.default_rng(0)
    triplets = np.array([rng.permutation(5)[:3] for _ in range(40)], dtype=np.int64)
    subjects = rng.integers(0, 3, size=40)
    root = _image_folder(tmp_path, NAMES)
    body = "\n".join(f"{ORDER[a]},{ORDER[b]},{ORDER[c]},{s}" for (a, b, c), s in
                     zip(triplets.tolist(), subjects.tolist(), strict=True))  # fmt: skip
    _write(root / "triplets.csv", f"# convention: {convention}\n{body}\n# trailing note\n")
    ds = load_dataset(str(root))
    assert ds.kind == "triplets" and ds.triplet_convention == convention
    assert ds.stimulus_ids == tuple(ORDER) and ds.id == f"folder:{root.resolve()}"
    np.testing.assert_array_equal(ds.triplets, triplets)  # rows in == rows out
    np.testing.assert_array_equal(ds.subjects, subjects)
    assert ds.image_paths is not None and [p.name for p in ds.image_paths if p] == sorted(NAMES)


def test_folder_triplets_by_index_with_manifest(tmp_path: Path) -> None:
    root = _image_folder(tmp_path, NAMES)
    _write(root / "dataset.json", json.dumps({"convention": "anchor", "refer_by": "index",
                                              "citation": "me (2024)"}))  # fmt: skip
    _write(root / "triplets.csv", "0\t1\t2\n4\t3\t0\n")
    ds = load_dataset(f"folder:{root}")
    assert ds.triplet_convention == "anchor" and ds.citation == "me (2024)"
    assert ds.triplets is not None and ds.triplets.tolist() == [[0, 1, 2], [4, 3, 0]]
    assert ds.subjects is None


@pytest.mark.parametrize(
    ("content", "manifest", "message"),
    [
        ("cat,dog,bus\n", None, r"triplets\.csv: declares no triplet convention"),
        ("# convention: sideways\ncat,dog,bus\n", None, r"declares convention 'sideways'"),
        ("# convention: anchor\ncat,dog,bus\ncat,dog\n", None, r"line 3: has 2 columns"),
        ("# convention: anchor\ncat,dog,bus\ncat,dog,cow\n", None,
         r"line 3: column 3 names unknown image 'cow'"),
        ("# convention: anchor\ncat,dog,cat\n", None, r"line 2: repeats a stimulus"),
        ("# convention: anchor\n0,1,2\n0,1,5\n", {"refer_by": "index"},
         r"line 3: column 3 index 5 is out of range"),
        ("# convention: anchor\n0,1,2\n0,x,3\n", {"refer_by": "index"},
         r"line 3: column 2 is 'x', not an integer"),
        ("# convention: anchor\ncat,dog,bus,1\ncat,dog,bus,s2\n", None,
         r"line 3: subject \(column 4\) is 's2'"),
        ("# convention: anchor\ncat,dog,bus\n", {"convention": "odd-one-out"},
         r"declares convention 'anchor' but dataset\.json says 'odd-one-out'"),
        ("# convention: anchor\n", None, r"triplets\.csv: is empty"),
    ],
)  # fmt: skip
def test_malformed_folder_triplets(
    tmp_path: Path, content: str, manifest: dict | None, message: str
) -> None:
    root = _image_folder(tmp_path, NAMES)
    _write(root / "triplets.csv", content)
    if manifest is not None:
        _write(root / "dataset.json", json.dumps(manifest))
    with pytest.raises(InvalidInputError, match=message) as info:
        load_dataset(str(root))
    assert "triplets.csv" in str(info.value)


def test_duplicate_image_names_are_an_error(tmp_path: Path) -> None:
    root = _image_folder(tmp_path, ["cat.png", "cat.jpg", "dog.jpg"])
    _write(root / "triplets.csv", "# convention: anchor\ncat,dog,cat\n")
    with pytest.raises(InvalidInputError, match=r"duplicate image names 'cat.jpg' and 'cat.png'"):
        load_dataset(str(root))


def test_bad_manifest_names_file_and_line(tmp_path: Path) -> None:
    root = _image_folder(tmp_path, NAMES)
    _write(root / "dataset.json", '{\n  "convention": "anchor",\n  oops\n}')
    with pytest.raises(InvalidInputError, match=r"dataset\.json, line 3: is not valid JSON"):
        load_dataset(str(root))
    _write(root / "dataset.json", '{"conventoin": "anchor"}')
    with pytest.raises(InvalidInputError, match=r"unknown keys \['conventoin'\]"):
        load_dataset(str(root))


def _symmetric(n: int, s: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.random((s or 1, n, n))
    a = a + a.transpose(0, 2, 1)
    a[:, np.arange(n), np.arange(n)] = 0
    return a if s else a[0]


def _rows(folder: Path, rows: list[str]) -> Path:
    return _write(folder / "rdm.csv", "\n".join(rows) + "\n")


def test_folder_rdm_round_trips_npy_and_csv(tmp_path: Path) -> None:
    stack = _symmetric(5, s=3)
    root = _image_folder(tmp_path / "a", NAMES)
    np.save(root / "rdm.npy", stack)
    ds = load_dataset(str(root))
    assert ds.kind == "rdm" and ds.matrix_kind == "dissimilarity"
    np.testing.assert_array_equal(ds.matrices, stack)
    root = _image_folder(tmp_path / "b", NAMES)
    np.savetxt(root / "rsm.csv", stack[0], delimiter=",", fmt="%.17g")
    ds = load_dataset(str(root))
    assert ds.matrix_kind == "similarity" and ds.matrices is not None
    np.testing.assert_array_equal(ds.matrices[0], stack[0])


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (lambda p: np.save(p / "rdm.npy", _symmetric(4)), r"rdm\.npy: is 4x4 \(expected 5x5"),
        (lambda p: np.save(p / "rdm.npy", np.ones((5, 4))), r"rdm\.npy: has shape \(1, 5, 4\)"),
        (lambda p: np.save(p / "rdm.npy", np.triu(_symmetric(5))),
         r"rdm\.npy: is not symmetric: entry \(row 1, column 2\)"),
        (lambda p: np.save(p / "rdm.npy", np.where(np.eye(5) > 0, np.nan, _symmetric(5))),
         r"rdm\.npy: has a non-finite entry nan at row 1, column 1"),
        (lambda p: _rows(p, ["0,1,2,3,4", "1,0,1,1,1", "2,1,nan,1,1", "3,1,1,0,1", "4,1,1,1,0"]),
         r"rdm\.csv, line 3: column 3 is 'nan'"),
        (lambda p: _rows(p, ["0,1,2,3,4", "1,0,1,1,1", "2,1,0,1", "3,1,1,0,1", "4,1,1,1,0"]),
         r"rdm\.csv, line 3: has 4 columns"),
        (lambda p: _rows(p, ["0,1,2,3,4", "1,0,1,one,1", "2,1,0,1,1", "3,1,1,0,1", "4,1,1,1,0"]),
         r"rdm\.csv, line 2: column 4 is 'one', not a number"),
        (lambda p: _write(p / "rdm.csv", "\n"), r"rdm\.csv: is empty"),
    ],
)  # fmt: skip
def test_malformed_folder_matrices(tmp_path: Path, writer, message: str) -> None:
    root = _image_folder(tmp_path, NAMES)
    writer(root)
    with pytest.raises(InvalidInputError, match=message):
        load_dataset(str(root))


def test_folder_with_both_judgments_needs_a_kind(tmp_path: Path) -> None:
    root = _image_folder(tmp_path, NAMES)
    np.save(root / "rdm.npy", _symmetric(5))
    _write(root / "triplets.csv", "# convention: anchor\ncat,dog,bus\n")
    with pytest.raises(InvalidInputError, match="holds both triplets and a matrix"):
        load_dataset(str(root))
    _write(root / "dataset.json", json.dumps({"kind": "rdm"}))
    assert load_dataset(str(root)).kind == "rdm"


def test_malformed_wordsim_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "ws.txt", "cat\tdog\t7.5\ncar\tbus\tlots\n")
    with pytest.raises(InvalidInputError, match=r"ws\.txt, line 2: score \(column 3\) is 'lots'"):
        read_pairs(path)
    path = _write(tmp_path / "ws2.txt", "cat\tdog\t7.5\ncar\tbus\n")
    with pytest.raises(InvalidInputError, match=r"ws2\.txt, line 2: has 2 columns"):
        read_pairs(path)


def test_mat_v73_hdf5_is_read_with_h5py(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="h5py reads MATLAB v7.3 files")
    matrix = _symmetric(6)
    matrix[0, 1] = 5.0  # asymmetric on purpose: checks the MATLAB transpose
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["RDM"] = matrix.T  # MATLAB stores column-major
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116))
    np.testing.assert_array_equal(load_mat(path, "RDM"), matrix)
    with pytest.raises(InvalidInputError, match=r"v73\.mat: has no variable 'X'"):
        load_mat(path, "X")


def test_options_are_rejected_where_they_do_not_apply(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="triplets: was given for things48"):
        load_dataset("things48", tmp_path, triplets=tmp_path / "t.npy")
    with pytest.raises(InvalidInputError, match="images: was given for mur92"):
        load_dataset("mur92", tmp_path, images=tmp_path)
    with pytest.raises(InvalidInputError, match="order: is 'sorted'"):
        load_dataset("things", tmp_path, triplets=SHIPPED, triplet_order="sorted")
    with pytest.raises(InvalidInputError, match="dataset: is a int"):
        load_dataset(3)  # type: ignore[arg-type]


def test_a_relative_folder_path_loads(tmp_path: Path, monkeypatch) -> None:
    root = _image_folder(tmp_path / "myset", NAMES)
    _write(root / "triplets.csv", "# convention: odd-one-out\ncat,dog,bus\n")
    monkeypatch.chdir(tmp_path)
    assert load_dataset("myset").triplets is not None


def test_derived_csv_format_and_its_errors(tmp_path: Path) -> None:
    # header obj1,obj2,obj3,odd_one_out_position_1to3,subject_id; 0-based objects; the
    # odd one out moves to column 2 (others keep their order), subjects as given
    path = _write(
        tmp_path / "d.csv",
        "obj1,obj2,obj3,odd_one_out_position_1to3,subject_id\n"
        "# a comment\n"
        "5,6,7,1,12\n"
        "\n"
        "0,1853,2,2,3\n"
        "9,8,4,3,12\n",
    )
    t, subjects = read_things_triplets(path)
    assert t.tolist() == [[6, 7, 5], [0, 2, 1853], [9, 8, 4]]
    assert subjects is not None and subjects.tolist() == [12, 3, 12]
    raw, _ = read_things_triplets(path, order="raw")
    order = _sortindex()  # raw index -> concept index, independently from its file
    assert raw.tolist() == order[np.array([[6, 7, 5], [0, 2, 1853], [9, 8, 4]])].tolist()
    bad = {
        "5,6,7,1\n": r"line 2: has 4 columns",
        "5,6,x,1,1\n": r"line 2: obj3 is 'x'",
        "5,6,1854,1,1\n": r"line 2: object index 1854",
        "5,6,-1,1,1\n": r"line 2: object index -1",
        "5,6,7,4,1\n": r"line 2: odd_one_out_position_1to3 4",
        "5,6,7,0,1\n": r"line 2: odd_one_out_position_1to3 0",
    }
    header = "obj1,obj2,obj3,odd_one_out_position_1to3,subject_id\n"
    for row, message in bad.items():
        p = _write(tmp_path / "bad.csv", header + row)
        with pytest.raises(InvalidInputError, match=message):
            read_things_triplets(p)
    with pytest.raises(InvalidInputError, match="has a header but no data rows"):
        read_things_triplets(_write(tmp_path / "empty.csv", header))


def test_zero_based_npy_and_text_details(tmp_path: Path) -> None:
    # whole floats are indices; the last valid index is N - 1; rows come out as given
    np.save(tmp_path / "f.npy", np.array([[0.0, 1.0, 1853.0], [4.0, 3.0, 2.0]]))
    t, subjects = read_things_triplets(tmp_path / "f.npy")
    assert t.dtype == np.int64 and t.tolist() == [[0, 1, 1853], [4, 3, 2]] and subjects is None
    np.save(tmp_path / "u.npy", np.array([[0, 1, 2]], dtype=np.uint16))
    assert read_things_triplets(tmp_path / "u.npy")[0].tolist() == [[0, 1, 2]]
    cases = {
        "half.npy": (np.array([[0.0, 1.0, 2.0], [0.0, 1.5, 2.0]]), r"half\.npy, row 1"),
        "nan.npy": (np.array([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [np.nan, 1, 2]]), r"row 2"),
        "big.npy": (np.array([[0, 1, 2], [1854, 1, 2]]), r"big\.npy, row 1 .*out of range"),
        "str.npy": (np.array([["0", "1", "2"]]), r"str\.npy: holds <U1"),
        "empty.npy": (np.zeros((0, 3), dtype=int), r"has shape \(0, 3\)"),
        "flat.npy": (np.zeros(3, dtype=int), r"has shape \(3,\)"),
    }
    for name, (arr, message) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(InvalidInputError, match=message):
            read_things_triplets(tmp_path / name)
    # text: comments and blank lines are skipped but counted in the line numbers
    path = _write(tmp_path / "z.txt", "# header\n0 1 2\n\n3 4 1853\n")
    assert read_things_triplets(path)[0].tolist() == [[0, 1, 2], [3, 4, 1853]]
    for text, message in {
        "# c\n0 1 2\n\n3 -4 5\n": r"line 4: object index -4",
        "0 1 2\n3 4.5 5\n": r"line 2",
    }.items():
        with pytest.raises(InvalidInputError, match=message):
            read_things_triplets(_write(tmp_path / "zb.txt", text))
