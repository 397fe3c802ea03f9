"""Configuration of the ``embedding`` application as typed models.

:class:`EmbeddingArgs` is the ``args`` of the application in deploy/serve_config.yaml
(Ray Serve validates them into it: :func:`align_services.embedding.app.build_app` is
annotated with it); :class:`BatchConfig` is the ``user_config`` of a family deployment;
:class:`Limits` the per-request limits of the ingress. Unknown keys are refused; every
validation error is an :class:`~align.errors.InvalidInputError` whose field is the full
path of the bad key (``args.resources.gpu.num_gpus``) and that says what was expected.
"""

from __future__ import annotations

import os
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Self

from align.errors import InvalidInputError, NotFoundError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

#: Model family -> the deployment that embeds it.
FAMILY_DEPLOYMENTS: dict[str, str] = {
    "timm": "TimmEmbedder",
    "torch": "TimmEmbedder",
    "open_clip": "OpenClipEmbedder",
    "text": "TextEmbedder",
    # the `objectives` extra's families ride on the same replicas (load_model is generic):
    # image networks with the timm ones, word vectors with the text ones
    "onnx": "TimmEmbedder",
    "hed": "TimmEmbedder",
    "dlib": "TimmEmbedder",
    "glove": "TextEmbedder",
}
ALL_FAMILIES: tuple[str, ...] = ("timm", "open_clip", "text")

#: Env var that overrides ``args.device`` (set on GPU hosts: compose.gpu.yml, KubeRay pods).
DEVICE_ENV = "ALIGN_DEVICE"
DEVICES = ("auto", "cpu", "gpu")
#: ``ray_actor_options`` of every family replica, by device (``args.resources`` replaces
#: a device's preset as a whole). A GPU fraction: the three families share one GPU.
DEFAULT_RESOURCES: dict[str, dict[str, Any]] = {
    "cpu": {"num_cpus": 1},
    "gpu": {"num_cpus": 1, "num_gpus": 0.25},
}


# ----------------------------------------------------------------------------------------
# pydantic's errors as align errors


def _path(where: str, loc: tuple[int | str, ...]) -> str:
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class in a field's annotation (``M`` or ``M | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(filter(None, map(_model_in, typing.get_args(annotation))), None)
    return None


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` below ``model``."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        found = _model_in(field.annotation) if field is not None else None
        if found is None:
            return None
        model = found
    return model


def _expected(error: Mapping[str, Any]) -> str:
    kind, message = error["type"], str(error["msg"])
    if kind == "missing":
        return "a value"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "a mapping"
    if kind in ("tuple_type", "list_type"):
        return "a list"
    for prefix in ("Value error, ", "Input should be "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def invalid_input(exc: ValidationError, model: type[BaseModel], where: str) -> InvalidInputError:
    """The first error of ``exc`` as an InvalidInputError naming the full key path.

    Unknown keys come first and together (all those of one mapping, with the keys it
    knows), as the hand-written checks before these models reported them.
    """
    errors = exc.errors(include_url=False)
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        parent = extra[0]["loc"][:-1]
        unknown = sorted(str(e["loc"][-1]) for e in extra if e["loc"][:-1] == parent)
        owner = _model_at(model, parent)
        known = sorted(owner.model_fields) if owner is not None else []
        return InvalidInputError(
            _path(where, parent), f"has unknown keys {unknown}", f"only {known}"
        )
    error = errors[0]
    problem = "is missing" if error["type"] == "missing" else f"is {reprlib.repr(error['input'])}"
    return InvalidInputError(_path(where, error["loc"]), problem, _expected(error))


class Settings(BaseModel):
    """A frozen settings model that refuses unknown keys and raises align errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: the name of the mapping this model validates, as errors name it
    WHERE: ClassVar[str] = ""

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """pydantic's model_validate, with an InvalidInputError (naming the key and what
        was expected) instead of a ValidationError."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise invalid_input(exc, cls, cls.WHERE) from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | BaseModel | None) -> Self:
        """Validate ``values`` (None: every default; a model of this class: itself)."""
        if isinstance(values, cls):
            return values
        return cls.model_validate({} if values is None else values)


# ----------------------------------------------------------------------------------------
# Devices and the family replicas' ray_actor_options


def device_name(value: Any) -> str:
    """``auto``, ``cpu`` or ``gpu`` (``cuda``/``cuda:N``, a torch device, is ``gpu``)."""
    name = str(value).strip().lower()
    if name == "cuda" or name.startswith("cuda:"):
        return "gpu"
    if name not in DEVICES:
        raise ValueError("auto, cpu or gpu (or cuda)")
    return name


def _on_gpu(gpus: float) -> float:
    if not gpus > 0:
        raise ValueError("> 0 on the gpu device")
    return gpus


def _on_cpu(gpus: float) -> float:
    if gpus > 0:
        raise ValueError("0 on the cpu device")
    return gpus


Amount = Annotated[float, Field(ge=0)]


class ActorOptions(BaseModel):
    """``ray_actor_options`` of a family replica (other Ray options pass through)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    num_cpus: Amount = 0


class CpuOptions(ActorOptions):
    num_gpus: Annotated[Amount, AfterValidator(_on_cpu)] = 0


class GpuOptions(ActorOptions):
    num_gpus: Annotated[Amount, AfterValidator(_on_gpu)] = 0


class Resources(Settings):
    """``args.resources``: the preset of each device (a given preset replaces the
    default of its device as a whole)."""

    cpu: CpuOptions | None = None
    gpu: GpuOptions | None = None

    def preset(self, device: str) -> dict[str, Any]:
        given: ActorOptions | None = getattr(self, device)
        if given is None:
            return dict(DEFAULT_RESOURCES[device])
        return given.model_dump(exclude_unset=True)


# ----------------------------------------------------------------------------------------
# The application's args, the ingress's limits, a family deployment's user_config


class Limits(Settings):
    """Per-request limits, checked by the ingress (RESOURCE_EXHAUSTED when exceeded)."""

    WHERE = "limits"
    max_stimuli_per_request: Annotated[int, Field(gt=0)] = 4096
    max_request_bytes: Annotated[int, Field(gt=0)] = 256 * 1024 * 1024


class BatchConfig(Settings):
    """``user_config`` of a family deployment (reconfigurable without a restart)."""

    WHERE = "user_config"
    max_batch_stimuli: Annotated[int, Field(ge=1)] = 64
    batch_wait_timeout_s: Annotated[float, Field(ge=0)] = 0.01
    torch_threads: Annotated[int, Field(ge=1)] = 1
    #: run concurrent requests as ONE forward batch (throughput). On CPU a merged batch
    #: can round the last bits differently from embedding each request alone; False
    #: keeps the embedded library's exact bits per request (requests still queue here).
    merge_requests: bool = True


def _families(value: Any) -> Any:
    return ALL_FAMILIES if not value else value


class EmbeddingArgs(Settings):
    """The ``args`` of the application (deploy/serve_config.yaml)."""

    WHERE = "args"
    #: auto | cpu | gpu; the env var ALIGN_DEVICE wins (see :func:`replica_resources`)
    device: Annotated[str, BeforeValidator(device_name)] = "auto"
    resources: Resources = Resources()
    #: the families served (default all); ``torch`` is served by TimmEmbedder
    families: Annotated[tuple[str, ...], BeforeValidator(_families)] = ALL_FAMILIES
    #: LRU set of loaded models per family replica
    max_models_per_replica: Annotated[int, Field(ge=1)] = 2
    limits: Limits = Limits()
    #: ingress retries when a family replica dies, and the first backoff (doubling)
    retries: Annotated[int, Field(ge=0)] = 3
    retry_backoff_s: Annotated[float, Field(ge=0)] = 0.5
    #: the server's data directory (default: ALIGN_DATA_DIR / ../shared/data)
    data_dir: str | None = None

    @field_validator("resources", "limits", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        """A key given as null (``limits:`` with nothing below it) takes its default."""
        return {} if value is None else value

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: tuple[str, ...]) -> tuple[str, ...]:
        for family in families:
            if family not in FAMILY_DEPLOYMENTS:
                raise NotFoundError("model family", family, FAMILY_DEPLOYMENTS)
        return families

    def deployments(self) -> dict[str, str]:
        """Deployment name -> the first family it serves, for the served families."""
        out: dict[str, str] = {}
        for family in self.families:
            out.setdefault(FAMILY_DEPLOYMENTS[family], family)
        return out


def cluster_gpus() -> float:
    """GPUs of the connected Ray cluster now (0 when this process is not in Ray)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def replica_resources(
    args: EmbeddingArgs | Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cluster_gpus: Callable[[], float] = cluster_gpus,
) -> tuple[str, dict[str, Any]]:
    """The device of the family replicas (``"cpu"`` or ``"gpu"``) and their
    ``ray_actor_options``.

    The device: ``environ["ALIGN_DEVICE"]`` when set (non-empty), else ``args.device``
    (default ``auto``); ``cuda``/``cuda:N`` mean ``gpu``; ``auto`` is ``gpu`` when
    ``cluster_gpus()`` (default: the connected Ray cluster's, at build time) is > 0,
    else ``cpu``. The options: ``args.resources[device]``, else
    :data:`DEFAULT_RESOURCES`. A GPU preset must ask for ``num_gpus`` > 0 (that request
    also makes Ray's autoscaler add GPU nodes); a CPU preset must not.
    """
    args = EmbeddingArgs.from_mapping(args)
    environ = os.environ if environ is None else environ
    device = args.device
    if environ.get(DEVICE_ENV, "").strip():
        try:
            device = device_name(environ[DEVICE_ENV])
        except ValueError as exc:
            raise InvalidInputError(DEVICE_ENV, f"is {environ[DEVICE_ENV]!r}", str(exc)) from None
    if device == "auto":
        device = "gpu" if cluster_gpus() > 0 else "cpu"
    return device, args.resources.preset(device)
