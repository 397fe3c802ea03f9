from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedRequest(_message.Message):
    __slots__ = ("model", "layer", "images", "words", "dataset", "stimulus_ids", "batch_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    STIMULUS_IDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    layer: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    words: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    stimulus_ids: _containers.RepeatedScalarFieldContainer[str]
    batch_size: int
    def __init__(self, model: _Optional[str] = ..., layer: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., words: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., stimulus_ids: _Optional[_Iterable[str]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("data", "shape", "model_digest", "layer", "spec_digest", "model", "spec_json", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SPEC_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    model_digest: str
    layer: str
    spec_digest: str
    model: str
    spec_json: str
    dtype: str
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., model_digest: _Optional[str] = ..., layer: _Optional[str] = ..., spec_digest: _Optional[str] = ..., model: _Optional[str] = ..., spec_json: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("pattern",)
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    def __init__(self, pattern: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("id", "family", "architecture", "modality", "layers", "digest", "weights_available", "preprocessing_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    family: str
    architecture: str
    modality: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    weights_available: bool
    preprocessing_json: str
    def __init__(self, id: _Optional[str] = ..., family: _Optional[str] = ..., architecture: _Optional[str] = ..., modality: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., weights_available: _Optional[bool] = ..., preprocessing_json: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "version", "metric_code_version", "device", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    status: str
    version: str
    metric_code_version: str
    device: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[str] = ..., version: _Optional[str] = ..., metric_code_version: _Optional[str] = ..., device: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "dataset", "metrics", "layer", "options_json", "refresh", "features", "features_shape", "features_dtype")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_DTYPE_FIELD_NUMBER: _ClassVar[int]
    model: str
    dataset: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    layer: str
    options_json: str
    refresh: bool
    features: bytes
    features_shape: _containers.RepeatedScalarFieldContainer[int]
    features_dtype: str
    def __init__(self, model: _Optional[str] = ..., dataset: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., layer: _Optional[str] = ..., options_json: _Optional[str] = ..., refresh: _Optional[bool] = ..., features: _Optional[bytes] = ..., features_shape: _Optional[_Iterable[int]] = ..., features_dtype: _Optional[str] = ...) -> None: ...

class ScoreProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "message", "queue_position", "report_json", "report_key", "cache_hit")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    REPORT_KEY_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    message: str
    queue_position: int
    report_json: str
    report_key: str
    cache_hit: bool
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ..., queue_position: _Optional[int] = ..., report_json: _Optional[str] = ..., report_key: _Optional[str] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("id", "kind", "present", "path", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    present: bool
    path: str
    description: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., present: _Optional[bool] = ..., path: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class UploadedFile(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("digest", "files")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    digest: str
    files: _containers.RepeatedCompositeFieldContainer[UploadedFile]
    def __init__(self, digest: _Optional[str] = ..., files: _Optional[_Iterable[_Union[UploadedFile, _Mapping]]] = ...) -> None: ...

class UploadDatasetResponse(_message.Message):
    __slots__ = ("dataset", "present", "stored")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    present: bool
    stored: bool
    def __init__(self, dataset: _Optional[str] = ..., present: _Optional[bool] = ..., stored: _Optional[bool] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("key", "report_json")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    key: str
    report_json: str
    def __init__(self, key: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...
