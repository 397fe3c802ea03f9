"""Model ids -> specs, weights (package, file, random), precomputed features, torch modules."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from align.errors import DataMissingError, InvalidInputError, NotFoundError  # noqa: E402
from align.models import (  # noqa: E402
    ModelSpec,
    Preprocessing,
    StimulusWarning,
    embed_dataset,
    from_torch,
    get_spec,
    list_models,
    load_model,
    register_model,
)
from align.models.checkpoints import map_by_order, read_state_dict  # noqa: E402
from align.models.timm_family import package_weights_file  # noqa: E402


def _need_package(arch: str):
    path = package_weights_file(arch)
    if path is None:
        pytest.skip(f"{arch} weights package not installed")
    return path


def test_list_models_globs_listed_ids():
    ids = [s.id for s in list_models("timm/tf_efficientnet_lite*")]
    assert "timm/tf_efficientnet_lite0" in ids and all(i.startswith("timm/") for i in ids)
    assert all(isinstance(s, ModelSpec) for s in list_models())
    assert list_models("nothing-matches-*") == []


def test_unknown_id_suggests_close_matches():
    with pytest.raises(NotFoundError) as e:
        get_spec("timm/tf_efficientnet_lite9")
    assert "timm/tf_efficientnet_lite0" in e.value.suggestions
    with pytest.raises(NotFoundError, match="did you mean"):
        get_spec("text/all-MiniLM-L6-v3")
    with pytest.raises(NotFoundError):
        get_spec("resnet50")
    with pytest.raises(InvalidInputError, match="model"):
        get_spec("")


def test_package_weights_digest_matches_file_name_hash():
    path = _need_package("tf_efficientnet_lite0")
    spec = get_spec("timm/tf_efficientnet_lite0")
    assert spec.weights.source == "package"
    assert spec.weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # torch.hub names files <name>-<first 8 hex of sha256>.pth
    assert spec.weights.sha256.startswith(path.stem.rsplit("-", 1)[1])


def test_preprocessing_comes_from_timm_pretrained_cfg():
    for k, size in ((0, 224), (1, 240), (2, 260)):
        spec = get_spec(f"timm/tf_efficientnet_lite{k}")
        cfg = timm.models.get_pretrained_cfg(f"tf_efficientnet_lite{k}")
        pre = spec.preprocessing
        assert pre.input_size == (size, size) == tuple(cfg.input_size[1:])
        assert (pre.mean, pre.std, pre.crop_pct) == (cfg.mean, cfg.std, cfg.crop_pct)
        assert pre.interpolation == cfg.interpolation
        assert pre.resize_size == int(size / cfg.crop_pct)


@pytest.mark.parametrize("k", [1, 2])
def test_lite_packages_map_by_order_with_every_shape_checked(k):
    path = _need_package(f"tf_efficientnet_lite{k}")
    model = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False)
    sd = read_state_dict(path)
    mapped = map_by_order(model, sd, "test")
    assert list(mapped) == list(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(InvalidInputError, match="tensors but the model has"):
        map_by_order(lite0, sd, "lite weights")  # another depth: counts differ
    sd0 = dict(read_state_dict(_need_package("tf_efficientnet_lite0")))
    key = list(sd0)[7]
    sd0[key] = torch.zeros(3, 1, 1, 1)  # one tensor of the wrong shape, same count
    with pytest.raises(InvalidInputError, match=r"tensor #7 .* has shape \(3, 1, 1, 1\)"):
        map_by_order(lite0, sd0, "lite weights")


def test_random_init_is_seeded_and_checkpoints_round_trip(tmp_path):
    a = load_model("timm/resnet18@random", device="cpu")
    b = load_model("timm/resnet18@random", device="cpu")
    for (ka, va), (kb, vb) in zip(
        a.module.state_dict().items(), b.module.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    ckpt = tmp_path / "r18.pth"
    torch.save({"model": a.module.state_dict()}, ckpt)
    c = load_model(f"timm/resnet18@{ckpt}", device="cpu")
    assert c.spec.weights.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    x = [np.full((64, 64, 3), 128, np.uint8)]
    assert np.array_equal(c.embed(x)["penultimate"], a.embed(x)["penultimate"])
    assert c.embed(x)["penultimate"].shape == (1, 512)


def test_bad_checkpoints_raise_invalid_input(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x04not a checkpoint at all")
    with pytest.raises(InvalidInputError, match=r"junk\.pth"):
        load_model(f"timm/resnet18@{junk}")
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), wrong)
    with pytest.raises(InvalidInputError, match="does not fit"):
        load_model(f"timm/resnet18@{wrong}")
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "code": SimpleNamespace(x=1)}, evil)
    with pytest.raises(InvalidInputError, match="cannot be read"):  # weights_only refuses
        load_model(f"timm/resnet18@{evil}")
    with pytest.raises(InvalidInputError, match="does not exist"):
        get_spec(f"timm/resnet18@{tmp_path / 'none.pth'}")


def test_hub_only_architecture_offline_is_data_missing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_spec("timm/resnet18")
    assert spec.weights.source == "hub"
    with pytest.raises(DataMissingError, match="HF_HUB_OFFLINE"):
        load_model(spec)


def test_vit_offers_cls_and_avgpool():
    vit = load_model("timm/vit_tiny_patch16_224@random", device="cpu")
    assert {"penultimate", "logits", "cls", "avgpool"} <= set(vit.layers)
    x = [np.full((32, 48, 3), 200, np.uint8)]
    out = vit.embed(x, layers=("cls", "avgpool", "penultimate"))
    with torch.inference_mode():
        t = torch.from_numpy(vit.transform(__import__("PIL.Image").Image.fromarray(x[0])))
        feats = vit.module.forward_features(t[None])
    np.testing.assert_allclose(out["cls"][0], feats[0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["avgpool"][0], feats[0, 1:].mean(0).numpy(), atol=1e-5)
    assert out["cls"].shape == (1, 192)


def test_features_npy_and_npz_with_ids(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 5)).astype(np.float32)
    np.save(tmp_path / "f.npy", X)
    model = load_model(f"features:{tmp_path / 'f.npy'}")
    ds = SimpleNamespace(id="d", stimulus_ids=("a", "b", "c", "d"), words=None, image_paths=None)
    assert np.array_equal(embed_dataset(model, ds)["penultimate"], X)
    assert np.array_equal(model.embed([2, 0])["penultimate"], X[[2, 0]])
    np.savez(
        tmp_path / "g.npz", features=X[:3], logits=X[:3, :2], stimulus_ids=np.array(["c", "a", "b"])
    )
    m2 = load_model(f"features:{tmp_path / 'g.npz'}")
    assert set(m2.layers) >= {"penultimate", "logits"}
    with pytest.warns(StimulusWarning, match="1 of 4"):
        out = embed_dataset(m2, ds, layers=("penultimate", "logits"))
    assert np.array_equal(out["penultimate"][:3], X[[1, 2, 0]])
    assert np.isnan(out["penultimate"][3]).all() and out["logits"].shape == (4, 2)


def test_features_wrong_rows_and_corrupt_files(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((3, 2), np.float32))
    ds = SimpleNamespace(id="d", stimulus_ids=("a", "b"), words=None, image_paths=None)
    with pytest.raises(InvalidInputError, match="has 3 rows"):
        embed_dataset(load_model(f"features:{tmp_path / 'f.npy'}"), ds)
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(InvalidInputError, match=r"bad\.npy"):
        get_spec(f"features:{tmp_path / 'bad.npy'}")
    np.save(tmp_path / "v.npy", np.zeros(5))
    with pytest.raises(InvalidInputError, match=r"\(n, p\)"):
        get_spec(f"features:{tmp_path / 'v.npy'}")


def test_from_torch_keeps_nchw_on_the_cpu_for_modules_that_view_their_activations():
    """A module of unknown code may ``.view()`` a conv's output, which NHWC activations
    refuse: on the CPU ``from_torch`` keeps the module's own layout."""

    class ViewsActivations(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3, stride=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            return h.view(h.shape[0], -1)  # NCHW-contiguous only

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = ViewsActivations()
    h = net.conv(torch.ones(1, 3, 16, 16)).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="view"):  # what NHWC would do to this module
        h.view(1, -1)
    pre = Preprocessing.from_config(16, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    model = from_torch(net, pre, id="torch/views", device="cpu")
    out = model.embed([np.full((20, 20, 3), 255, np.uint8)])["penultimate"]
    with torch.inference_mode():
        np.testing.assert_allclose(out, net(torch.ones(1, 3, 16, 16)).numpy(), atol=1e-6)


def test_from_torch_module_runs_on_the_engine():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )
    pre = Preprocessing.from_config(16, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    model = from_torch(net, pre, id="torch/tiny")
    img = np.full((20, 20, 3), 255, np.uint8)
    out = model.embed([img], layers=("penultimate", "0"))
    x = torch.ones(1, 3, 16, 16)  # white -> (1 - 0.5) / 0.5
    with torch.inference_mode():
        np.testing.assert_allclose(out["penultimate"], net(x).numpy(), atol=1e-6)
        np.testing.assert_allclose(out["0"], net[0](x).reshape(1, -1).numpy(), atol=1e-6)
    register_model("torch/tiny", model)
    assert load_model("torch/tiny") is model and get_spec("torch/tiny").family == "torch"
    assert model.spec.digest == from_torch(net, pre, id="torch/tiny").spec.digest
