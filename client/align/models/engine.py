"""The in-process embedding engine: batched, deterministic, memory-bounded.

``EmbeddingModel.embed`` turns stimuli into ``{layer: (n, p) float32}``. Image models
decode and preprocess in ``DataLoader`` workers (``num_workers``; 0 = in process, in a
background thread that decodes the next batches while this one runs forward), run
every requested layer in ONE forward pass (named layers are computed from the same
features; any module name is captured with a forward hook) under
``torch.inference_mode``, and write each batch into a preallocated output (an unlinked
``np.memmap`` under the cache dir when it would exceed ``ALIGN_MEMMAP_BYTES``, 1 GiB by
default), so memory stays bounded for any dataset size. Convolutions run on NHWC
(channels_last) activations on a GPU and, for the registry's families, on the CPU too. On
a GPU: bf16 autocast and a batch size that halves itself on out-of-memory.

Missing-stimulus policy (:func:`embed_dataset`): a stimulus with no image path, a missing
file or an undecodable image gets an all-NaN row (the metrics drop what touches it and
report ``n_dropped``) and ONE :class:`StimulusWarning` counts them; every other row is
unaffected. If no stimulus at all is usable, :class:`DataMissingError` is raised.
``embed`` itself is strict: the first bad stimulus raises ``InvalidInputError`` naming its
index and source.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .images import check_sequence, load_image, preprocess
from .spec import DEFAULT_LAYER, ModelSpec, Preprocessing

Layers = Sequence[str] | str
#: A named layer: a function of (model, features-context) -> (batch, p) tensor.
LayerFn = Callable[[dict[str, Any]], torch.Tensor]
#: RGB PIL image -> (3, h, w) array or tensor.
Transform = Callable[[Any], Any]


class _Preprocess:
    """Picklable transform from a Preprocessing (DataLoader workers receive it)."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre

    def __call__(self, image: Any) -> np.ndarray:
        return preprocess(image, self.pre)


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 3:
        raise InvalidInputError("preprocess", f"returned shape {a.shape}", "(channels, h, w)")
    return a


class StimulusWarning(UserWarning):
    """Some stimuli of a dataset could not be embedded; their rows are all-NaN."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _normalize_layers(layers: Layers) -> tuple[str, ...]:
    if isinstance(layers, str):
        layers = (layers,)
    out = tuple(dict.fromkeys(layers))
    if not out or not all(isinstance(name, str) and name for name in out):
        raise InvalidInputError("layers", f"is {layers!r}", "one or more layer names")
    return out


def _memmap_limit() -> int:
    try:
        return int(os.environ.get("ALIGN_MEMMAP_BYTES", str(1 << 30)))
    except ValueError:
        return 1 << 30


def _cache_dir() -> Path:
    root = os.environ.get("ALIGN_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "align"


def allocate(n: int, p: int, out_dir: str | Path | None = None) -> np.ndarray:
    """An (n, p) float32 array; an unlinked memmap when large or when ``out_dir`` is set."""
    if out_dir is None and n * p * 4 <= _memmap_limit():
        return np.empty((n, p), dtype=np.float32)
    folder = Path(out_dir) if out_dir is not None else _cache_dir() / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="emb-", suffix=".f32", dir=folder)
    os.close(fd)
    try:
        return np.memmap(name, dtype=np.float32, mode="w+", shape=(n, p))
    finally:
        os.unlink(name)  # the mapping stays valid; the file disappears with the array


class _Outputs:
    """Per-layer outputs, allocated when the first batch tells the width."""

    def __init__(self, n: int, layers: tuple[str, ...], out_dir: str | Path | None) -> None:
        self.n, self.layers, self.out_dir = n, layers, out_dir
        self.arrays: dict[str, np.ndarray] = {}

    def write(self, rows: np.ndarray, values: dict[str, np.ndarray]) -> None:
        for name in self.layers:
            v = values[name]
            if name not in self.arrays:
                self.arrays[name] = allocate(self.n, v.shape[1], self.out_dir)
            self.arrays[name][rows] = v

    def nan_rows(self, rows: Sequence[int]) -> None:
        for a in self.arrays.values():
            a[list(rows)] = np.nan

    def result(self) -> dict[str, np.ndarray]:
        return {name: self.arrays[name] for name in self.layers}


def _progress(total: int, enabled: bool, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, delay=1.0, unit=unit, leave=False)


class EmbeddingModel:
    """A loaded model. ``embed(stimuli, layers, batch_size, progress)`` -> {layer: array}."""

    modalities: tuple[str, ...] = ()

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None) -> None:
        self.spec = spec
        self.device = torch.device(device) if device is not None else default_device()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.id!r}, device={str(self.device)!r})"

    @property
    def layers(self) -> tuple[str, ...]:
        """The named layers (any module name is accepted too where the model has modules)."""
        return self.spec.layers

    def embed(
        self,
        stimuli: Sequence[Any],
        layers: Layers = (DEFAULT_LAYER,),
        batch_size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------
# Image models


class _ImageItems(torch.utils.data.Dataset):  # type: ignore[type-arg,unused-ignore]
    """Decodes in the worker; a failure travels back as data (field, problem, expected),
    so the main process raises (or NaN-fills) with the exact error."""

    def __init__(self, stimuli: Sequence[Any], transform: Transform) -> None:
        self.stimuli, self.transform = stimuli, transform

    def __len__(self) -> int:
        return len(self.stimuli)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, tuple[str, ...]]:
        try:
            return i, _as_array(self.transform(load_image(self.stimuli[i], i))), ()
        except InvalidInputError as e:
            return i, None, (e.field, e.problem, e.expected or "")


def _collate(items: list[tuple[int, np.ndarray | None, tuple[str, ...]]]) -> Any:
    good = [(i, a) for i, a, _ in items if a is not None]
    bad = [(i, err) for i, a, err in items if a is None]
    idx = np.array([i for i, _ in good], dtype=np.int64)
    x = torch.from_numpy(np.stack([a for _, a in good])) if good else None
    return idx, x, bad


_DONE = object()


def _prefetched(batches: Iterable[Any], depth: int) -> Iterator[Any]:
    """Yield ``batches`` in order while a daemon thread produces up to ``depth`` ahead.

    At most ``depth`` produced batches wait in the queue (plus the one being produced and
    the one the caller holds), so memory stays bounded. An exception in the producer is
    re-raised here, in the caller, in order; when the caller stops early (an error, a
    ``break``), the producer is told to stop and joined.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
        except BaseException as exc:  # re-raised in the consumer
            put((None, exc))
            return
        put((_DONE, None))

    worker = threading.Thread(target=produce, name="align-decode", daemon=True)
    worker.start()
    try:
        while True:
            batch, exc = q.get()
            if exc is not None:
                raise exc
            if batch is _DONE:
                return
            yield batch
    finally:
        stop.set()
        worker.join()


class ImageModel(EmbeddingModel):
    """A torch image network with named layers computed in one forward pass.

    ``forward(x)`` returns a context dict (e.g. ``{"features": ...}``) from which each
    named layer function computes its (batch, p) tensor; module names are hooked.
    """

    modalities: tuple[str, ...] = ("image",)

    def __init__(
        self,
        spec: ModelSpec,
        module: nn.Module,
        forward: Callable[[torch.Tensor, tuple[str, ...]], dict[str, Any]],
        named: dict[str, LayerFn],
        device: torch.device | str | None = None,
        transform: Transform | None = None,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__(spec, device)
        if transform is None:
            if spec.preprocessing is None:
                raise InvalidInputError(
                    "preprocessing", f"is missing for {spec.id}", "the model's own config"
                )
            transform = _Preprocess(spec.preprocessing)
        self.transform = transform
        self.module = module.eval().to(self.device)
        self._forward = forward
        self._named = named
        self._lock = threading.Lock()
        self._cuda = self.device.type == "cuda"
        # NHWC (channels_last) activations: the layout cuDNN and oneDNN's CPU convolutions
        # run fastest in (bench/README.md, "Second run, 2026-12-03": EfficientNet-Lite0
        # 1.2-1.75x on one CPU thread, VGG16 1.3x, ResNet-50 1.1x, transformers 1.0x). On
        # the CPU the rows differ from NCHW's at float32 rounding (~1e-6 of scale, as one
        # thread against two does) and, on one thread, do not depend on the batch they are
        # in (tested). None: on CUDA only, because a module of unknown code may .view()
        # its activations, which NHWC refuses; the registry's families, whose code is
        # known, pass True.
        self._channels_last = self._cuda if channels_last is None else bool(channels_last)
        if self._channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if self._cuda:
            torch.backends.cudnn.benchmark = False  # deterministic algorithm choice

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self._named)

    def _check_layers(self, layers: tuple[str, ...]) -> None:
        modules = dict(self.module.named_modules())
        for name in layers:
            if name not in self._named and (name == "" or name not in modules):
                raise NotFoundError(
                    "layer",
                    name,
                    [*self._named, *list(modules)[1:]],
                    hint=f"named layers of {self.spec.id}: {', '.join(self._named)}; "
                    "any module name from model.module.named_modules() also works",
                )

    def _run(self, x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
        # one forward at a time per model: hooks live on the shared module, so concurrent
        # callers (e.g. threads of a Serve replica) must not see each other's activations
        with self._lock:
            return self._run_locked(x, layers)

    def _run_locked(self, x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
        captured: dict[str, torch.Tensor] = {}
        handles = []
        modules = dict(self.module.named_modules())
        for name in layers:
            if name in self._named:
                continue

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, (tuple, list)):
                    out = out[0]
                captured[name] = out

            handles.append(modules[name].register_forward_hook(hook))
        try:
            x = x.to(self.device, non_blocking=True)
            if self._channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            autocast: Any = contextlib.nullcontext()
            if self._cuda:
                autocast = torch.autocast("cuda", dtype=torch.bfloat16)
            with torch.inference_mode(), autocast:
                ctx = self._forward(x, layers)
                outs = {}
                for name in layers:
                    t = self._named[name](ctx) if name in self._named else captured[name]
                    outs[name] = t.reshape(t.shape[0], -1).float().cpu().numpy()
        finally:
            for h in handles:
                h.remove()
        return outs

    #: Batches decoded ahead by a background thread when ``num_workers`` is 0 (in-process
    #: decoding): the next batch's JPEG decode and preprocessing (Pillow and numpy release
    #: the GIL) overlap the forward pass of this one. 0 decodes serially, in the caller.
    prefetch_batches: int = 2

    def _batches(self, stimuli: Sequence[Any], batch_size: int, num_workers: int) -> Iterator[Any]:
        items = _ImageItems(stimuli, self.transform)
        loader = torch.utils.data.DataLoader(
            items,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=self._cuda,
            persistent_workers=False,
        )
        if num_workers > 0 or self.prefetch_batches <= 0:
            yield from loader
            return
        yield from _prefetched(loader, self.prefetch_batches)

    def embed_images(
        self,
        stimuli: Sequence[Any],
        layers: Layers = (DEFAULT_LAYER,),
        batch_size: int | None = None,
        progress: bool = False,
        *,
        strict: bool = True,
        num_workers: int | None = None,
        out_dir: str | Path | None = None,
    ) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
        """Embed images; returns (outputs, failures). ``strict=False`` turns bad images
        into NaN rows listed in ``failures`` as (index, message)."""
        stimuli = check_sequence(stimuli)
        names = _normalize_layers(layers)
        self._check_layers(names)
        n = len(stimuli)
        bs = _batch_size(batch_size, 256 if self._cuda else 32)
        workers = _num_workers(num_workers, self._cuda)
        out = _Outputs(n, names, out_dir)
        failures: list[tuple[int, str]] = []
        pending: list[int] = []
        with _progress(n, progress, "img") as bar:
            for idx, x, bad in self._batches(stimuli, bs, workers):
                if bad and strict:
                    field, problem, expected = bad[0][1]
                    raise InvalidInputError(field, problem, expected or None)
                failures.extend((i, ": ".join(err[:2])) for i, err in bad)
                if x is not None:
                    values = self._run_adaptive(x, names)
                    out.write(idx, values)
                pending.extend(i for i, _ in bad)
                bar.update(len(idx) + len(bad))
        if not out.arrays:  # nothing decoded: learn the widths from one blank image
            from PIL import Image

            blank = _as_array(self.transform(Image.new("RGB", (256, 256), (255, 255, 255))))
            values = self._run(torch.from_numpy(blank)[None], names)
            out.write(np.zeros(0, dtype=np.int64), {k: v[:0] for k, v in values.items()})
        out.nan_rows(pending)
        return out.result(), failures

    def _run_adaptive(self, x: torch.Tensor, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Run a batch; on CUDA out-of-memory, split it in halves (same numbers per row)."""
        try:
            return self._run(x, names)
        except torch.OutOfMemoryError:
            if x.shape[0] == 1:
                raise
            torch.cuda.empty_cache()
            half = x.shape[0] // 2
            a = self._run_adaptive(x[:half], names)
            b = self._run_adaptive(x[half:], names)
            return {k: np.concatenate([a[k], b[k]]) for k in names}

    def embed(
        self,
        stimuli: Sequence[Any],
        layers: Layers = (DEFAULT_LAYER,),
        batch_size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> dict[str, np.ndarray]:
        """Embed images (paths, encoded bytes, PIL images or arrays), strictly: a bad
        image raises InvalidInputError naming its index and source. Options:
        ``num_workers`` (decoding processes), ``out_dir`` (memmap outputs there)."""
        _check_options(options, {"num_workers", "out_dir", "modality"})
        modality = options.pop("modality", None)
        if modality not in (None, "image"):
            raise InvalidInputError("modality", f"is {modality!r}", f"'image' for {self.spec.id}")
        outputs, _ = self.embed_images(stimuli, layers, batch_size, progress, **options)
        return outputs


def _check_options(options: dict[str, Any], allowed: set[str]) -> None:
    for key in options:
        if key not in allowed:
            raise InvalidInputError(key, "is not an option of embed", ", ".join(sorted(allowed)))


def _text_words(
    stimuli: Sequence[Any], layers: Layers, options: dict[str, Any], who: str
) -> list[str]:
    """Check a text embed call (options, layers: only 'penultimate', stimuli: strings) and
    return the words; ``who`` names what offers only 'penultimate' in the error hint."""
    _check_options(options, {"modality", "num_workers", "out_dir"})
    if options.get("modality") not in (None, "text"):
        raise InvalidInputError("modality", f"is {options['modality']!r}", "'text'")
    names = _normalize_layers(layers)
    if names != (DEFAULT_LAYER,):
        raise NotFoundError(
            "layer",
            ",".join(names),
            [DEFAULT_LAYER],
            hint=f"({who} offers only 'penultimate')",
        )
    if isinstance(stimuli, str) or not hasattr(stimuli, "__len__"):
        raise InvalidInputError("stimuli", f"is a {type(stimuli).__name__}", "a list of str")
    words = list(stimuli)
    for i, w in enumerate(words):
        if not isinstance(w, str):
            raise InvalidInputError(
                f"stimuli[{i}]",
                f"is a {type(w).__name__}",
                "a string (text models embed words)",
            )
    return words


def _batch_size(batch_size: int | None, default: int) -> int:
    if batch_size is None:
        return default
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError("batch_size", f"is {batch_size!r}", "a positive integer")
    return batch_size


def _num_workers(num_workers: int | None, cuda: bool) -> int:
    if num_workers is None:
        env = os.environ.get("ALIGN_NUM_WORKERS")
        if env is not None:
            num_workers = int(env)
        else:  # on a GPU decoding is the bottleneck; on CPU the cores are busy computing
            num_workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if cuda else 0
    if num_workers < 0:
        raise InvalidInputError("num_workers", f"is {num_workers}", "0 or more")
    return num_workers


# ----------------------------------------------------------------------------------------
# Datasets


def embed_dataset(
    model: EmbeddingModel,
    dataset: Any,
    layers: Layers = (DEFAULT_LAYER,),
    batch_size: int | None = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Embed a dataset's stimuli in its order: images for image models, words for text
    models (open_clip: images when the dataset has them, else its text tower on words).

    Missing or undecodable stimuli get all-NaN rows and one :class:`StimulusWarning`.
    """
    n = len(dataset.stimulus_ids)
    paths = getattr(dataset, "image_paths", None)
    words = getattr(dataset, "words", None)
    ident = getattr(dataset, "id", "dataset")
    if hasattr(model, "embed_rows"):  # precomputed features: rows are the dataset's
        rows: dict[str, np.ndarray] = model.embed_rows(dataset, _normalize_layers(layers))
        return rows
    use_images = "image" in model.modalities and paths is not None
    if use_images and isinstance(model, ImageModel):
        assert paths is not None
        present = [i for i, p in enumerate(paths) if p is not None]
        if not present:
            raise DataMissingError(
                f"{ident}: no stimulus has an image; cannot embed with image model {model.spec.id}"
            )
        outputs, failures = model.embed_images(
            [paths[i] for i in present], layers, batch_size, progress, strict=False, **options
        )
        if len(failures) == len(present):
            raise DataMissingError(
                f"{ident}: none of the {len(present)} images could be read, e.g. "
                f"{failures[0][1]}. Is the data directory (ALIGN_DATA_DIR) complete?"
            )
        full = _scatter(outputs, present, n, options.get("out_dir"))
        n_none = n - len(present)
        if n_none or failures:
            example = f"; first failure: {failures[0][1]}" if failures else ""
            warnings.warn(
                f"{ident}: {n_none + len(failures)} of {n} stimuli have no usable image "
                f"({n_none} without an image, {len(failures)} missing or undecodable); "
                f"their rows are NaN{example}",
                StimulusWarning,
                stacklevel=2,
            )
        return full
    if "text" in model.modalities and words is not None:
        present = [i for i, w in enumerate(words) if isinstance(w, str) and w.strip()]
        if not present:
            raise DataMissingError(f"{ident}: no stimulus has a word to embed")
        outputs = model.embed(
            [words[i] for i in present], layers, batch_size, progress, modality="text", **options
        )
        full = _scatter(outputs, present, n, options.get("out_dir"))
        if len(present) < n:
            warnings.warn(
                f"{ident}: {n - len(present)} of {n} stimuli have no word; their rows are NaN",
                StimulusWarning,
                stacklevel=2,
            )
        return full
    have = [k for k, v in (("images", paths), ("words", words)) if v is not None]
    raise InvalidInputError(
        "dataset",
        f"{ident} has {' and '.join(have) or 'no stimuli to embed'}, but model "
        f"{model.spec.id} embeds {' or '.join(model.modalities)}",
        "a dataset with stimuli of the model's modality",
    )


def _scatter(
    outputs: dict[str, np.ndarray], rows: list[int], n: int, out_dir: Any
) -> dict[str, np.ndarray]:
    if len(rows) == n:
        return outputs
    full = {}
    for name, a in outputs.items():
        b = allocate(n, a.shape[1], out_dir)
        b[:] = np.nan
        b[rows] = a
        full[name] = b
    return full
