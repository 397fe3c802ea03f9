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


# --- THINGS loader details (mutation survivors of things.py, issue 15) --------------------


def _raw_to_concept(raw: list[int]) -> list[int]:
    # known answer: concept c has raw index sortindex[c] (the shipped text file), by a loop
    inverse = {int(r): c for c, r in enumerate(_sortindex())}
    return [inverse[r] for r in raw]


# three homonym-block raw indices (0-based) whose concept index differs from the raw one
HOMONYMS_RAW = [246, 816, 1149]


def test_homonym_rows_are_mapped_when_a_file_declares_raw_order(tmp_path: Path) -> None:
    a, b, c = _raw_to_concept(HOMONYMS_RAW)
    assert (a, b, c) == (247, 820, 1150)  # sortindex[247] == 246 and so on
    # 3-column 0-based text and .npy: odd one last
    text = _write(tmp_path / "t.txt", "246 816 1149\n5 6 7\n")
    assert read_things_triplets(text, order="raw")[0].tolist() == [[a, b, c], [5, 6, 7]]
    assert read_things_triplets(text, order="concepts")[0].tolist() == [[246, 816, 1149], [5, 6, 7]]
    assert read_things_triplets(text)[0].tolist() == [[246, 816, 1149], [5, 6, 7]]
    # derived CSV: 0-based, odd position 1 -> the first object moves to column 2
    derived = _write(
        tmp_path / "d.csv",
        "obj1,obj2,obj3,odd_one_out_position_1to3,subject_id\n246,816,1149,1,4\n",
    )
    assert read_things_triplets(derived, order="raw")[0].tolist() == [[b, c, a]]
    assert read_things_triplets(derived, order="concepts")[0].tolist() == [[816, 1149, 246]]
    # THINGS-data CSV: 1-based, choice 2 -> the second object moves to column 2
    csv_path = _write(tmp_path / "c.csv", "image1\timage2\timage3\tchoice\n247\t817\t1150\t2\n")
    assert read_things_triplets(csv_path, order="raw")[0].tolist() == [[a, c, b]]
    assert read_things_triplets(csv_path, order="concepts")[0].tolist() == [[246, 1149, 816]]
    assert read_things_triplets(csv_path)[0].tolist() == [[246, 1149, 816]]


def test_zero_based_text_fast_path_and_its_fallback(tmp_path: Path) -> None:
    # any whitespace between columns and a trailing "# note" after a later row are read
    # (pandas' whitespace reader); the result is the rows as written
    path = _write(tmp_path / "z.txt", "0 1 2\n3\t4   1853  # last row\n")
    t, subjects = read_things_triplets(path)
    assert t.dtype == np.int64 and t.tolist() == [[0, 1, 2], [3, 4, 1853]] and subjects is None
    # "0, 1, 2" is three words: the line reader (comma separated) reads it
    path = _write(tmp_path / "c.txt", "0, 1, 2\n3, 4, 1853\n")
    assert read_things_triplets(path)[0].tolist() == [[0, 1, 2], [3, 4, 1853]]
    cases = {
        "0.5 1.5 2.5\n": r"f\.txt, line 1: obj_1 is '0\.5', not an integer",  # all fractional
        "0 1 2\nx 4 5\n": r"f\.txt, line 2: obj_1 is 'x', not an integer",
        "0 1 2\n3 x 5\n": r"f\.txt, line 2: obj_2 is 'x', not an integer",
        "0 1 2\n3 4 x\n": r"f\.txt, line 2: odd_one_out is 'x', not an integer",
        "0 1 2\n3 4 5 6\n": r"f\.txt, line 2: has 4 columns",
        # the first offending line is named, not the first line holding the last index
        "0 1 1853\n3 -1 5\n": r"f\.txt, line 2: object index -1 is out of range",
    }
    _refused_rows(tmp_path / "f.txt", "", cases, end="")


def test_a_pickled_npy_is_refused(tmp_path: Path) -> None:
    objects = np.empty((1, 3), dtype=object)
    objects[0] = [0, 1, 2]
    np.save(tmp_path / "o.npy", objects, allow_pickle=True)
    with pytest.raises(InvalidInputError, match=r"o\.npy: is not a readable \.npy .*allow_pickle"):
        read_things_triplets(tmp_path / "o.npy")


def _refused_rows(path: Path, head: str, cases: dict[str, str], end: str = "\n") -> None:
    """Each row of ``cases``, written after ``head`` (and ended by ``end``) into ``path``,
    is refused with its message (a regex)."""
    for row, message in cases.items():
        with pytest.raises(InvalidInputError, match=message):
            read_things_triplets(_write(path, head + row + end))


def test_raw_things_file_names_the_column_and_checks_choice_first(tmp_path: Path) -> None:
    good = "1\t2\t3\t1\t9\n"
    cases = {
        "x\t2\t3\t1\t9": r"r\.csv, line 2: obj_i is 'x', not an integer",
        "1\t2\tx\t1\t9": r"r\.csv, line 2: obj_k is 'x', not an integer",
        "1\t2\t3\tx\t9": r"r\.csv, line 2: choice is 'x', not an integer",
        "1\t2\t3\t1\tx": r"r\.csv, line 2: subject is 'x', not an integer",
        # choice 0 is a bad choice, not a bad object index
        "1\t2\t3\t0\t9": r"r\.csv, line 2: choice \(odd-one-out position\) 0 is out of range",
    }
    _refused_rows(tmp_path / "r.csv", good, cases)


def test_derived_csv_names_file_line_and_column(tmp_path: Path) -> None:
    header = "obj1,obj2,obj3,odd_one_out_position_1to3,subject_id\n"
    cases = {
        "x,6,7,1,1": r"e\.csv, line 2: obj1 is 'x', not an integer",
        "5,x,7,1,1": r"e\.csv, line 2: obj2 is 'x', not an integer",
        "5,6,7,x,1": r"e\.csv, line 2: odd_one_out_position_1to3 is 'x', not an integer",
        "5,6,7,1,x": r"e\.csv, line 2: subject_id is 'x', not an integer",
        "5,6,7,1": r"e\.csv, line 2: has 4 columns",
        "5,6,1854,1,1": r"e\.csv, line 2: object index 1854 is out of range",
        # -1 is a bad odd-one-out position, not a bad object index
        "5,6,7,-1,1": r"e\.csv, line 2: odd_one_out_position_1to3 -1 is out of range",
    }
    _refused_rows(tmp_path / "e.csv", header, cases)


def test_integers_beyond_int64_and_infinities_are_refused_with_file_line_and_column(
    tmp_path: Path,
) -> None:
    # they used to escape as a bare OverflowError (from np.asarray, or int(inf))
    big = "99999999999999999999"  # > 2**63 - 1
    header = "obj1,obj2,obj3,odd_one_out_position_1to3,subject_id\n"
    cases = {
        f"5,6,7,1,{big}": rf"d\.csv, line 2: subject_id is '{big}', beyond 64-bit integers",
        f"{big},6,7,1,1": rf"d\.csv, line 2: obj1 is '{big}', beyond 64-bit integers",
        "5,6,7,1,inf": r"d\.csv, line 2: subject_id is 'inf', not an integer",
        "5,6,7,1,1e400": r"d\.csv, line 2: subject_id is '1e400', not an integer",
    }
    _refused_rows(tmp_path / "d.csv", header, cases)
    # the largest int64 parses (and is then refused as an index, by range)
    top = str(2**63 - 1)
    with pytest.raises(InvalidInputError, match=rf"line 2: object index {top} is out of range"):
        read_things_triplets(_write(tmp_path / "d.csv", header + f"5,6,{top},1,1\n"))


def test_things_data_csv_values_subjects_and_refusals(tmp_path: Path) -> None:
    head = "image1\timage2\timage3\tchoice\tsubject_id\n"
    # subject ids become codes in SORTED order of the ids: W1 -> 0, W5 -> 1, W9 -> 2
    rows = "1\t2\t3\t1\tW9\n4\t5\t6\t3\tW1\n1\t2\t3\t2\tW9\n7\t8\t1854\t1\tW5\n"
    t, subjects = read_things_triplets(_write(tmp_path / "s.csv", head + rows))
    assert t.tolist() == [[1, 2, 0], [3, 4, 5], [0, 2, 1], [7, 1853, 6]]
    assert subjects is not None and subjects.dtype == np.int64
    assert subjects.tolist() == [2, 0, 2, 1]
    # no subject_id column: no subjects
    path = _write(tmp_path / "n.csv", "image1\timage2\timage3\tchoice\n1\t2\t3\t3\n")
    t, subjects = read_things_triplets(path)
    assert t.tolist() == [[0, 1, 2]] and subjects is None
    cases = {
        "1\t2\t3\t1\tw\n\n1\t2\t3\t1\tw\n": r"b\.csv, line 3: image1 is .*nan.*, not an integer",
        "1\t2.5\t3\t1\tw\n": r"b\.csv, line 2: image2 is .*2\.5.*, not an integer",
        "1\t2\t3\t1\tw\n1855\t2\t3\t1\tw\n": r"b\.csv, line 3: object index 1855 is out of range",
        "1\t2\t3\t4\tw\n": r"b\.csv, line 2: choice \(odd-one-out position\) 4 is out of range",
    }
    _refused_rows(tmp_path / "b.csv", head, cases, end="")


def test_things_data_csv_subject_ids_read_as_one_type(tmp_path: Path) -> None:
    # 150,000 numeric subject ids, then "W1" and "3": the whole column is read at once
    # (low_memory=False), so the last "3" is the same subject as the earlier "3"s
    n = 150_000
    lines = ["image1\timage2\timage3\tchoice\tsubject_id"]
    lines += [f"1\t2\t3\t1\t{i % 7}" for i in range(n)] + ["1\t2\t3\t1\tW1", "1\t2\t3\t1\t3"]
    _, subjects = read_things_triplets(_write(tmp_path / "big.csv", "\n".join(lines) + "\n"))
    assert subjects is not None and len(subjects) == n + 2
    # sorted ids "0" < ... < "6" < "W1": codes 0..7
    assert subjects[3] == 3 and subjects[-1] == 3 and subjects[-2] == 7 and subjects.max() == 7


def test_find_things_images_subfolders_lowest_number_and_ties(tmp_path: Path) -> None:
    from align.datasets.things import find_things_images

    folder = tmp_path / "images"
    names = [
        "readme.jpg",  # not <uniqueID>_NN[bs].jpg: skipped, the search goes on
        "aardvark_01b.jpg",
        "aardvark/aardvark_01b.jpg",  # the same name in a subfolder: the flat one wins
        "bib/bib_03s.jpg",
        "bib/bib_02s.jpg",
        "ice_01b.jpg",
        "ice-cream_cone_01b.jpg",
    ]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    found = find_things_images(folder, ("aardvark", "bib", "yo-yo", "ice", "ice-cream_cone"))
    assert found == (
        folder / "aardvark_01b.jpg",
        folder / "bib" / "bib_02s.jpg",
        None,
        folder / "ice_01b.jpg",
        folder / "ice-cream_cone_01b.jpg",
    )


def _uids() -> list[str]:
    import csv

    with open(SHIPPED.parent / "things_concepts.tsv", newline="", encoding="utf-8") as f:
        return [row["uniqueID"] for row in csv.DictReader(f, delimiter="\t")]


def test_things_dataset_metadata(tmp_path: Path) -> None:
    import re

    from align.datasets.things import load_things

    licence = "CC-BY 4.0 (behavioural data); images: THINGS database terms, academic use"
    ds = load_things(tmp_path)  # the default id
    assert ds.id == "things" and ds.triplet_convention == "odd-one-out"
    assert ds.source == str(SHIPPED) and ds.licence == licence
    assert ds.citation.startswith("Hebart, M. N., Zheng, C. Y., Pereira, F., & Baker, C. I. (2020)")
    assert ds.citation.endswith("https://osf.io/z2784/")
    # the description's counts, checked on the data: 20000 rows, 325 people, 1000 triplets
    assert ds.description == (
        "THINGS odd-one-out noise-ceiling set: 20,000 responses of 325 people on "
        "1,000 distinct triplets over 1,854 objects"
    )
    assert ds.triplets is not None and ds.subjects is not None and len(ds.triplets) == 20000
    assert len(set(ds.subjects.tolist())) == 325
    assert len({tuple(sorted(r)) for r in ds.triplets.tolist()}) == 1000
    # a THINGS-data file of the folder convention
    folder = tmp_path / "things" / "triplet_dataset"
    folder.mkdir(parents=True)
    _write(folder / "trainset.txt", "0 1 2\n")
    ds = load_dataset("things/train", tmp_path)
    assert ds.id == "things/train" and ds.description == "THINGS-data trainset.txt"
    assert ds.source == str(folder / "trainset.txt") and ds.licence == licence
    assert ds.citation.startswith("Hebart, M. N., Contier, O., Teichmann, L., et al. (2023)")
    assert ds.triplet_convention == "odd-one-out"
    # any file given as triplets=
    np.save(tmp_path / "t.npy", np.array([[0, 1, 2]]))
    ds = load_dataset("things", tmp_path, triplets=tmp_path / "t.npy")
    assert ds.id == "things" and ds.description == "THINGS triplets from t.npy"
    assert ds.source == str(tmp_path / "t.npy") and ds.licence == licence
    assert ds.citation.startswith("Hebart, M. N., Contier, O.")
    # a registered THINGS-data file that is absent: its id and where to get it
    full = folder / "triplets_large_final_correctednc_correctedorder.csv"
    expected = (
        f"things/full: things/full: {full} not found. "
        "Where to get it: https://osf.io/f5rn6/ (data/triplet_dataset/) ["
    )
    with pytest.raises(DataMissingError, match="^" + re.escape(expected)):
        load_dataset("things/full", tmp_path)


def test_missing_images_warning_text_and_location(tmp_path: Path) -> None:
    uids = _uids()
    images = tmp_path / "images"
    images.mkdir()
    gone = [0, 10, 100, 1000, 1500, 1853]
    for i, uid in enumerate(uids):
        if i not in gone:
            (images / f"{uid}_01b.jpg").write_bytes(b"")
    np.save(tmp_path / "t.npy", np.array([[0, 1, 2], [3, 4, 5], [11, 12, 1853]]))
    # six missing: the first five named, then "..."; five missing: all five, no "..."
    for names in [
        "aardvark, airplane, bead, microwave, soy_sauce ...",  # rows 0 10 100 1000 1500
        "aardvark, airplane, bead, microwave, zucchini",  # rows 0 10 100 1000 1853
    ]:
        expected = (
            f"things: {len(gone)} of 1854 images missing in {images} ({names}); "
            "2 of 3 triplets touch them and are dropped by image metrics"
        )
        with pytest.warns(UserWarning) as record:
            ds = load_dataset("things", tmp_path, triplets=tmp_path / "t.npy", images=images)
        assert [str(w.message) for w in record] == [expected]
        assert record[0].filename == __file__  # the caller's line (stacklevel)
        assert ds.missing_images == tuple(gone)
        if 1500 in gone:  # its image appears: five missing
            (images / f"{uids[1500]}_01b.jpg").write_bytes(b"")
            gone.remove(1500)


def test_vice_embedding_file_checks(tmp_path: Path) -> None:
    import re

    from align.datasets import things

    path = tmp_path / "things" / "vice_things_final_embedding.npy"
    expected = (
        f"VICE embedding: {path} not found. Where to get it: "
        "https://github.com/LukasMut/VICE (vice_things_final_embedding.npy)"
    )
    with pytest.raises(DataMissingError, match="^" + re.escape(expected) + "$"):
        things.load_vice_embedding(tmp_path)
    path.parent.mkdir()
    e = np.arange(1854 * 2, dtype=np.float32).reshape(1854, 2)
    np.save(path, e)
    out = things.load_vice_embedding(tmp_path)
    s = _sortindex()
    assert all(out[i].tolist() == e[s[i]].tolist() for i in range(1854))  # concept i = raw s[i]
    bad = e.copy()
    bad[5, 1] = np.nan
    for array, shape in [(bad, r"\(1854, 2\)"), (e[:, 0], r"\(1854,\)"), (e[:10], r"\(10, 2\)")]:
        np.save(path, array)
        with pytest.raises(InvalidInputError, match=rf"{re.escape(str(path))}: has shape {shape}"):
            things.load_vice_embedding(tmp_path)
    np.save(path, e.astype(object), allow_pickle=True)  # a pickle is never loaded
    with pytest.raises(ValueError, match="allow_pickle=False"):
        things.load_vice_embedding(tmp_path)


def test_vice_labels_and_spose_files(tmp_path: Path) -> None:
    import re

    from align.datasets import things

    assert things.load_vice_concept_labels(tmp_path, 3) == ("0", "1", "2")
    (tmp_path / "things").mkdir()
    _write(tmp_path / "things" / "vice_labels.txt", "animal\n\n  food \nmetal\n")
    assert things.load_vice_concept_labels(tmp_path, 3) == ("animal", "food", "metal")
    with pytest.raises(InvalidInputError, match=r"vice_labels\.txt: has 3 labels \(expected 4\)"):
        things.load_vice_concept_labels(tmp_path, 4)
    assert things.load_spose_labels(tmp_path) == tuple(str(i) for i in range(66))
    (tmp_path / "things_spose66d").mkdir()
    _write(tmp_path / "things_spose66d" / "labels_spose_66d_short.txt", " metal\n\nfood \n")
    assert things.load_spose_labels(tmp_path) == ("metal", "food")
    path = tmp_path / "things_spose66d" / "spose_embedding_66d.txt"
    expected = (
        f"SPoSE 66-d embedding: {path} not found. Where to get it: https://osf.io/f5rn6/ "
        "(spose_embedding_66d_sorted.txt) or github.com/florianmahner/pysrf"
    )
    with pytest.raises(DataMissingError, match="^" + re.escape(expected) + "$"):
        things.load_spose_embedding(tmp_path)
