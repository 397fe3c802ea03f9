"""The science: arrays in, results out (METHODS.md). Never reads files.

Submodules: ``oddoneout`` (zero-shot triplet accuracy, noise ceiling), ``bootstrap``
(shared CI helpers), ``concepts`` (per-VICE-dimension accuracy), ``wordsim`` (word
similarity), ``probe`` (linear probe; imports torch), ``rsa``, ``transfer``.

This package imports nothing heavy: the names below load their submodule on first use,
so ``import align.metrics`` never pulls in torch. (The function ``rsa`` is not
re-exported here: its name is also the submodule's; use ``align.metrics.rsa.rsa``.)
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # oddoneout
    "CHANCE": "oddoneout",
    "MissingStimuliWarning": "oddoneout",
    "OddOneOutResult": "oddoneout",
    "anchor_accuracy": "oddoneout",
    "loo_noise_ceiling": "oddoneout",
    "noise_ceiling": "oddoneout",
    "odd_one_out": "oddoneout",
    "pairwise_triplet_similarities": "oddoneout",
    "predict_odd_one_out": "oddoneout",
    # bootstrap
    "bootstrap_ci": "bootstrap",
    "bootstrap_mean_ci": "bootstrap",
    "cluster_mean": "bootstrap",
    "paired_cluster_difference": "bootstrap",
    # concepts
    "ConceptAccuracy": "concepts",
    "ConceptResult": "concepts",
    "concept_of_triplets": "concepts",
    "per_concept_accuracy": "concepts",
    # wordsim
    "WordSimResult": "wordsim",
    "word_similarity": "wordsim",
    # probe (torch)
    "ObjectKFold": "probe",
    "ProbeResult": "probe",
    "TripletProbe": "probe",
    "cross_validate_probe": "probe",
    # rsa
    "NoiseCeiling": "rsa",
    "RSAResult": "rsa",
    "compare_rdms": "rsa",
    "compute_rdm": "rsa",
    "rsa_noise_ceiling": "rsa",
    # transfer
    "apply_transform": "transfer",
    "transfer_rsa": "transfer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'align.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
