"""The paper's experiment set for one source (model or reference), numbers as JSON.

Every number here comes from the library's own entry points (``align.evaluate`` for
zero-shot accuracy, concepts, RSA and word similarity; ``align.metrics.transfer`` for
transfer; ``align.metrics.probe`` / ``glocal`` for probes), so a report shows exactly
what ``align score`` computes for the same inputs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import METRIC_CODE_VERSION, __version__
from ..errors import DataMissingError, InvalidInputError
from ..results import to_jsonable
from .probing import LAMBDAS, SIMULATED_LABEL, compose_lowrank, fit_pca, heldout_probe
from .sources import Source

RDM_DATASETS = ("things48", "mur92", "peterson-animals")
#: Probe variants: key -> (label, simulated supervision?, gLocal?)
PROBES = {
    "human": ("probe, human triplets", False, False),
    "simulated": ("probe, " + SIMULATED_LABEL, True, False),
    "glocal": ("gLocal probe, " + SIMULATED_LABEL, True, True),
}


@dataclass
class ReportConfig:
    """Options of a report / reproduce run (all recorded in the provenance)."""

    n_bootstrap: int = 1000
    seed: int = 0
    probes: bool = True
    rank: int = 32
    folds: int = 3
    n_simulated: int = 10000
    lambdas: tuple[float, ...] = LAMBDAS
    glocal_alpha: float = 0.1
    glocal_temperature: float = 0.1
    knn_k: int = 10
    #: also the paper's full-rank (p x p) probe on human triplets for trained networks
    #: (off by default: minutes per network on 2 cores)
    full_rank: bool = False
    layers: tuple[str, ...] | None = None
    datasets: tuple[str, ...] = ("things", *RDM_DATASETS, "wordsim")
    peterson_images: str | None = None
    n_threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))

    def check(self) -> None:
        if self.n_bootstrap < 0:
            raise InvalidInputError("n_bootstrap", f"is {self.n_bootstrap}", ">= 0")
        if self.rank < 2:
            raise InvalidInputError("rank", f"is {self.rank}", "an integer >= 2")
        if self.folds < 2:
            raise InvalidInputError("folds", f"is {self.folds}", "an integer >= 2")
        if not 0 <= self.glocal_alpha <= 1:
            raise InvalidInputError("glocal_alpha", f"is {self.glocal_alpha}", "in [0, 1]")


@dataclass
class Context:
    """Datasets and human embeddings shared by every source of a run."""

    datasets: dict[str, Any]
    unavailable: dict[str, str]
    vice: np.ndarray | None
    spose: np.ndarray | None
    concept_names: list[str]
    data_dir: str | Path | None = None
    digests: dict[str, str] = field(default_factory=dict)
    #: VICE dimensions named from data (best-matching labelled SPoSE dimension, with r)
    dimension_names: list[dict[str, Any]] | None = None


def load_context(cfg: ReportConfig, data_dir: str | Path | None = None) -> Context:
    """Load every dataset of ``cfg.datasets`` that is present; note why the others are not."""
    import warnings

    from ..datasets import list_datasets, load_dataset, load_spose_embedding, load_vice_embedding

    present = {s.id: s for s in list_datasets(data_dir)}
    datasets: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    wanted: list[str] = []
    for name in cfg.datasets:
        if name == "wordsim":
            wanted += [k for k in present if k.startswith("wordsim/")]
        else:
            wanted.append(name)
    for name in wanted:
        status = present.get(name)
        if status is None:
            raise InvalidInputError("datasets", f"names unknown dataset {name!r}", str(present))
        if not status.present:
            unavailable[name] = "files missing: " + ", ".join(status.missing)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if name == "peterson-animals" and cfg.peterson_images:
                    datasets[name] = load_dataset(name, data_dir, images=cfg.peterson_images)
                else:
                    datasets[name] = load_dataset(name, data_dir)
        except DataMissingError as exc:
            unavailable[name] = str(exc)
    if "things" not in datasets:
        raise DataMissingError("a report needs the THINGS triplets ('things' dataset)")
    try:
        vice = load_vice_embedding(data_dir)
    except DataMissingError:
        vice = None
    try:
        spose = load_spose_embedding(data_dir)
    except DataMissingError:
        spose = None
    things = datasets["things"]
    names = list(things.words or things.stimulus_ids)
    dimension_names = None
    if vice is not None and spose is not None:
        from ..datasets.base import resolve_data_dir
        from ..datasets.things import load_spose_labels
        from ..metrics.concepts import name_dimensions

        root, _ = resolve_data_dir(data_dir)
        spose_labels = load_spose_labels(root)
        dimension_names = [n.to_dict() for n in name_dimensions(vice, spose, spose_labels)]
    return Context(
        datasets,
        unavailable,
        vice,
        spose,
        names,
        data_dir,
        {k: str(v.digest) for k, v in datasets.items()},
        dimension_names,
    )


def concept_labels(
    vice: np.ndarray, names: list[str], top: int = 3, named: list[dict[str, Any]] | None = None
) -> list[str]:
    """A name per VICE dimension. With ``named`` (``Context.dimension_names``): the
    best-matching labelled SPoSE dimension and the match strength, then the top objects
    for orientation; else just the ``top`` highest-loading THINGS objects (the shipped
    VICE file has no dimension labels)."""
    out = []
    for k in range(vice.shape[1]):
        order = np.argsort(-vice[:, k], kind="stable")[:top]
        objects = ", ".join(names[i] for i in order)
        if named is not None:
            n = named[k]
            out.append(f"{k}: {n['label']} (r={n['match_r']:.2f}; {objects})")
        else:
            out.append(f"{k}: {objects}")
    return out


def _acc_entry(d: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "accuracy",
        "ci",
        "chance",
        "ceiling",
        "normalized",
        "ceiling_loo",
        "normalized_loo",
        "n_triplets",
        "n_distinct",
        "n_dropped",
        "bootstrap_unit",
    )
    return {k: d.get(k) for k in keys}


def run_source(source: Source, ctx: Context, cfg: ReportConfig) -> tuple[dict[str, Any], dict]:
    """All numbers for one source -> (JSON-able results, arrays for figures)."""
    import torch

    from ..evaluation import evaluate
    from ..metrics.bootstrap import distinct_triplet_groups, paired_cluster_difference
    from ..metrics.concepts import per_concept_accuracy
    from ..metrics.glocal import knn_overlap
    from ..metrics.probe import cross_validate_probe
    from ..metrics.transfer import apply_transform, target_objects, transfer_rsa

    torch.set_num_threads(max(1, cfg.n_threads))
    t_start = time.perf_counter()
    boot: dict[str, Any] = {"n_bootstrap": cfg.n_bootstrap, "seed": cfg.seed}
    things = ctx.datasets["things"]
    source.things_ids = tuple(things.stimulus_ids)
    out: dict[str, Any] = {"source": source.provenance(), "things": {}, "rsa": {}}
    arrays: dict[str, Any] = {"rdms": {}}
    layers = source.sweep if source.kind in ("network", "text") else ("penultimate",)
    feats = source.features(things, layers)
    X = feats["penultimate"]
    T = np.asarray(things.triplets, dtype=np.int64)
    out["things"]["features_shape"] = list(X.shape)
    zs = evaluate(X, things, ["odd_one_out"], **boot)["odd_one_out"].to_dict()
    out["things"]["zero_shot"] = _acc_entry(zs)
    out["things"]["layers"] = {}
    for layer in layers:
        d = evaluate(feats[layer], things, ["odd_one_out"], **boot)["odd_one_out"].to_dict()
        out["things"]["layers"][layer] = {**_acc_entry(d), "dim": int(feats[layer].shape[1])}
    del feats
    labels = (
        concept_labels(ctx.vice, ctx.concept_names, named=ctx.dimension_names)
        if ctx.vice is not None
        else None
    )
    if ctx.vice is not None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing stimuli: counted in n_dropped
            conc = per_concept_accuracy(
                X, T, ctx.vice, labels, reference=ctx.spose, reference_similarity="dot", **boot
            )
        out["things"]["concepts"] = [
            {
                **c.to_dict(),
                "name": ctx.dimension_names[c.dimension]["label"] if ctx.dimension_names else None,
                "match_r": (
                    ctx.dimension_names[c.dimension]["match_r"] if ctx.dimension_names else None
                ),
            }
            for c in conc.concepts
        ]
    transforms: dict[str, Any] = {}
    refits: dict[str, tuple[float, bool, bool]] = {}
    if cfg.probes and source.kind in ("network", "text", "features"):
        basis = fit_pca(X, cfg.rank)
        Z = basis.project(X)
        present = ~np.isnan(X).all(axis=1)
        keep_trip = ~(~present)[T].any(axis=1)
        zs_pred = np.full(T.shape[0], -1)
        zs_pred[keep_trip] = _zero_shot_pred(X, T[keep_trip])
        zs_correct = zs_pred == 2
        probes: dict[str, Any] = {}
        chosen: dict[str, float] = {}
        for key, (label, simulated, glocal) in PROBES.items():
            if simulated and ctx.spose is None:
                probes[key] = {"label": label, "unavailable": "SPoSE embedding missing"}
                continue
            t0 = time.perf_counter()
            res = heldout_probe(
                Z,
                T,
                label=label,
                simulate_from=ctx.spose if simulated else None,
                n_simulated=cfg.n_simulated,
                # gLocal reuses the lambda chosen for the plain probe with the same
                # supervision, so the two differ only by the local term
                lambdas=(chosen["simulated"],) if glocal and "simulated" in chosen else cfg.lambdas,
                k=cfg.folds,
                seed=cfg.seed,
                alpha=cfg.glocal_alpha if glocal else 0.0,
                temperature=cfg.glocal_temperature,
                n_threads=cfg.n_threads,
                n_bootstrap=cfg.n_bootstrap,
            )
            chosen[key] = res.lambda_
            res.transform = compose_lowrank(basis, res.probe)
            E = apply_transform(X, res.transform)
            res.knn_overlap = knn_overlap(X[present], E[present], cfg.knn_k)
            d = res.to_dict()
            d["rank_label"] = f"low-rank (first {basis.rank} principal components)"
            # zero-shot cosine on the raw features, same responses: a paired comparison
            # too, but across pipelines (the lift is against the baseline above)
            zs_same = zs_correct[res.test_index].astype(float)
            groups = distinct_triplet_groups(T[res.test_index])
            vs = paired_cluster_difference(res.correct.astype(float), zs_same, groups, **boot)
            d["zero_shot_same_responses"] = vs.b
            d["zero_shot_same_responses_ci"] = vs.ci_b
            d["vs_zero_shot"] = {"value": vs.difference, "ci": vs.ci_difference, "paired": True}
            d["wall_time_s"] = round(time.perf_counter() - t0, 2)
            if ctx.vice is not None:
                pc = per_concept_accuracy(
                    zs_correct[res.test_index],
                    T[res.test_index],
                    ctx.vice,
                    labels,
                    probed=res.correct,
                    **boot,
                )
                d["concepts"] = [c.to_dict() for c in pc.concepts]
            probes[key] = d
            transforms[key] = res.transform
            refits[key] = (res.lambda_, simulated, glocal)
        if cfg.full_rank and source.kind == "network" and not source.control:
            t0 = time.perf_counter()
            full = cross_validate_probe(
                X,
                T,
                lambdas=cfg.lambdas,
                k=cfg.folds,
                seed=cfg.seed,
                n_bootstrap=cfg.n_bootstrap,
                n_threads=cfg.n_threads,
            )
            fd = full.to_dict()
            fd["label"] = "probe, human triplets, full-rank (paper)"
            fd["rank_label"] = f"full-rank (paper): {X.shape[1]} x {X.shape[1]}"
            fd["wall_time_s"] = round(time.perf_counter() - t0, 2)
            probes["human_fullrank"] = fd
        out["things"]["probes"] = probes
        out["things"]["knn_k"] = cfg.knn_k
        arrays["transforms"] = transforms
    for name in RDM_DATASETS:
        if name in ctx.unavailable:
            out["rsa"][name] = {"unavailable": ctx.unavailable[name]}
            continue
        if name not in ctx.datasets:
            continue
        ds = ctx.datasets[name]
        try:
            Xd = source.features(ds, ("penultimate",))["penultimate"]
        except DataMissingError as exc:
            out["rsa"][name] = {"unavailable": str(exc)}
            continue
        r = evaluate(Xd, ds, ["rsa"], **boot)["rsa"].to_dict()
        entry: dict[str, Any] = {"rsa": r, "transfer": {}}
        # A cosine RDM ignores row norms, so L2 normalisation can only matter for a
        # euclidean RDM: cosine (raw), euclidean (raw) and euclidean (L2-normalised rows).
        variants: tuple[tuple[str, bool, str], ...] = (
            ("", False, "cosine"),
            ("/euclidean", False, "euclidean"),
            ("/l2/euclidean", True, "euclidean"),
        )
        # A target over THINGS objects (things48): the transform is refitted without
        # them (PCA basis and probe never see those objects' rows or triplets).
        excluded = target_objects(ds.stimulus_ids, things.stimulus_ids)
        target_transforms = transforms
        if excluded.size and transforms:
            target_transforms = {
                key: fit_transform_excluding(X, T, excluded, *refits[key], ctx, cfg)
                for key in transforms
            }
            entry["transfer_fit"] = {
                "excluded_objects": int(excluded.size),
                "note": "transform refitted without the target's THINGS objects",
            }
        for key, tr in target_transforms.items():
            for suffix, normalize, metric in variants:
                res_t = transfer_rsa(
                    Xd,
                    ds.matrices,
                    ds.matrix_kind,
                    tr,
                    normalize=normalize,
                    rdm_metric=metric,
                    **boot,
                )
                entry["transfer"][key + suffix] = {
                    "probe": key,
                    "normalize": normalize,
                    "rdm_metric": metric,
                    "before": res_t.before.score,
                    "before_ci": to_jsonable(res_t.before.ci),
                    "after": res_t.after.score,
                    "after_ci": to_jsonable(res_t.after.ci),
                    "delta": res_t.delta,
                    "delta_ci": to_jsonable(res_t.delta_ci),
                    "scale": res_t.after.scale,
                    "before_rows": "L2-normalised" if normalize else "raw",
                    "excluded_objects": int(excluded.size),
                    "transform_digest": res_t.transform_digest,
                }
        out["rsa"][name] = entry
        from ..metrics.rsa import compute_rdm, to_dissimilarity

        human, _ = to_dissimilarity(np.asarray(ds.matrices, dtype=np.float64), ds.matrix_kind)
        arrays["rdms"][name] = (compute_rdm(Xd, "cosine"), human.mean(axis=0))
    if source.kind == "text":
        out["wordsim"] = {}
        for name, ds in ctx.datasets.items():
            if not name.startswith("wordsim/"):
                continue
            Xw = source.features(ds, ("penultimate",))["penultimate"]
            w = evaluate(Xw, ds, ["wordsim"])["wordsim"].to_dict()
            out["wordsim"][name] = {
                k: w.get(k) for k in ("spearman", "coverage", "n_pairs", "n_covered", "score")
            }
    out["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    out["embedding_time_s"] = {k: round(v, 2) for k, v in source.timings.items()}
    out["embedding_cache_hit"] = dict(source.cache_hits)
    out["library_version"] = __version__
    out["metric_code_version"] = METRIC_CODE_VERSION
    return out, arrays


def fit_transform_excluding(
    X: np.ndarray,
    T: np.ndarray,
    excluded: np.ndarray,
    lambda_: float,
    simulated: bool,
    glocal: bool,
    ctx: Context,
    cfg: ReportConfig,
) -> Any:
    """The report's low-rank probe refitted at ``lambda_`` WITHOUT the ``excluded``
    THINGS objects: their feature rows are set missing before the PCA basis and the probe
    see anything, no training triplet touches them (real triplets over them are dropped;
    simulated ones are drawn over the other objects), and gLocal's unlabeled rows leave
    them out. The composed transform then applies to every row, the target's included."""
    from ..metrics.glocal import GLocalProbe
    from ..metrics.probe import TripletProbe
    from ..metrics.transfer import triplets_without
    from .probing import PROBE_FIT, simulate_triplets

    X_fit = np.array(X, dtype=np.float64, copy=True)
    X_fit[excluded] = np.nan
    basis = fit_pca(X_fit, cfg.rank)
    Z = basis.project(X_fit)
    present = ~np.isnan(Z).all(axis=1)
    objects = np.flatnonzero(present)
    if simulated:
        if ctx.spose is None:
            raise DataMissingError("simulated supervision needs the SPoSE embedding")
        trip = simulate_triplets(ctx.spose, objects, cfg.n_simulated, cfg.seed + cfg.folds)
    else:
        trip = T[triplets_without(T, np.flatnonzero(~present))]
    common = {"reg": lambda_, "seed": cfg.seed, "n_threads": cfg.n_threads, **PROBE_FIT}
    if glocal:
        probe: Any = GLocalProbe(
            alpha=cfg.glocal_alpha, temperature=cfg.glocal_temperature, **common
        ).fit(Z, trip, X_local=Z[objects])
    else:
        probe = TripletProbe(**common).fit(Z, trip)
    return compose_lowrank(basis, probe)


def _zero_shot_pred(X: np.ndarray, T: np.ndarray) -> np.ndarray:
    from ..metrics.oddoneout import predict_odd_one_out

    return np.asarray(predict_odd_one_out(X, T, "cosine"))
