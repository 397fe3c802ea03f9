"""align report / align reproduce on a tiny configuration over the real human data.

Sources: the SPoSE human embedding (reference row) and a features file derived from the
VICE embedding plus noise (stands in for a network; no images are embedded here).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from align.reporting.experiments import ReportConfig
from align.reporting.probing import compose_lowrank, fit_pca, simulate_triplets
from align.reporting.reproduce import build_report, numbers_only, reproduce

TINY = ReportConfig(
    n_bootstrap=50,
    seed=0,
    rank=6,
    n_simulated=800,
    lambdas=(0.1,),
    datasets=("things", "things48", "peterson-animals"),
    n_threads=1,
)


@pytest.fixture(scope="module")
def runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from align.datasets import load_vice_embedding

    root = tmp_path_factory.mktemp("reporting")
    rng = np.random.default_rng(0)
    V = load_vice_embedding(data_dir)
    X = V @ rng.normal(size=(V.shape[1], 24)) + 0.5 * rng.normal(size=(V.shape[0], 24))
    feats = root / "fake_things.npy"
    np.save(feats, X.astype(np.float32))
    models = ["reference/spose", f"features:{feats}"]
    data = reproduce(root / "docs", data_dir, models, TINY, cache=False)
    html = build_report(models, root / "report", data_dir, TINY, cache=False)
    return {"root": root, "data": data, "html": html, "X": X.astype(np.float32), "feats": feats}


def test_running_twice_gives_the_same_numbers(runs: dict) -> None:
    again = json.loads((runs["html"].parent / "results.json").read_text())
    first = json.loads(json.dumps(runs["data"]))
    # the HTML report stores the per-source numbers; reproduce adds the run-level
    # sections (objective contrasts, ceiling, claims) on top
    assert {"provenance", "results"} <= set(again) <= set(first)
    assert numbers_only(again) == numbers_only({k: first[k] for k in again})
    stored = json.loads((runs["root"] / "docs" / "figures" / "results.json").read_text())
    assert numbers_only(stored) == numbers_only(first)
    assert (runs["root"] / "docs" / "results.md").read_text().startswith("# Results")


def test_report_numbers_equal_the_library(runs: dict, data_dir: Path) -> None:
    from align.datasets import load_dataset, load_spose_embedding, load_vice_embedding
    from align.evaluation import evaluate
    from align.metrics.concepts import per_concept_accuracy

    things = load_dataset("things", data_dir)
    things48 = load_dataset("things48", data_dir)
    spose = load_spose_embedding(data_dir)
    got = {r["source"]["id"]: r for r in runs["data"]["results"]}
    zs = evaluate(spose, things, ["odd_one_out"], n_bootstrap=50, seed=0)["odd_one_out"]
    mine = got["reference/spose"]["things"]["zero_shot"]
    assert mine["accuracy"] == zs.accuracy and tuple(mine["ci"]) == tuple(zs.ci)
    assert mine["ceiling"] == zs.ceiling
    rows = [things.stimulus_ids.index(s) for s in things48.stimulus_ids]
    r48 = evaluate(spose[rows], things48, ["rsa"], n_bootstrap=50, seed=0)["rsa"]
    assert got["reference/spose"]["rsa"]["things48"]["rsa"]["score"] == r48.score
    pc = per_concept_accuracy(runs["X"], things.triplets, load_vice_embedding(data_dir))
    feats_row = got[f"features:{runs['feats']}"]
    assert [c["accuracy"] for c in feats_row["things"]["concepts"]] == [
        c.accuracy for c in pc.concepts
    ]
    text = runs["html"].read_text()
    assert f"{zs.accuracy:.3f} [{zs.ci[0]:.3f}, {zs.ci[1]:.3f}]" in text


def test_every_figure_is_written_small_and_carries_provenance(runs: dict) -> None:
    from PIL import Image

    for folder in (runs["root"] / "docs" / "figures", runs["html"].parent / "figures"):
        pngs = sorted(folder.glob("*.png"))
        names = {p.name for p in pngs}
        assert {"things_accuracy.png", "transfer.png"} <= names
        assert any(n.startswith("concepts_") for n in names)
        assert any(n.startswith("rdm_") for n in names)
        for p in pngs:
            assert 0 < p.stat().st_size < 300_000, p
            with Image.open(p) as im:
                prov = json.loads(im.info["Description"])
            assert "reference/spose" in prov["sources"]
            assert prov["datasets"]["things"] == runs["data"]["provenance"]["datasets"]["things"]
            assert prov["library_version"]


def test_html_references_only_files_that_exist(runs: dict) -> None:
    html = runs["html"]
    text = html.read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', text) + re.findall(r"href='([^'#]+)'", text)
    assert len(refs) > 5
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "/")), ref
        assert (html.parent / ref).is_file(), ref
    assert "peterson-animals: unavailable" in text
    assert any(html.parent.glob("transforms/**/transform.npz"))
    md = runs["root"] / "docs" / "results.md"
    for ref in re.findall(r"\]\(([^)]+)\)", md.read_text()):
        assert (md.parent / ref).is_file(), ref


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_a_headless_browser_with_every_image(runs: dict, tmp_path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium (make setup installs it via DEB_PACKAGES)")
    url = runs["html"].resolve().as_uri()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run(
        [exe, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    title = re.search(r"<title>([^<]*)</title>", dom)
    assert title is not None, dom[:500]
    n_images = len(re.findall(r"<img ", runs["html"].read_text()))
    assert title.group(1) == f"ok {n_images}/{n_images}"
    shot = tmp_path / "report.png"
    subprocess.run(
        [exe, *flags, f"--screenshot={shot}", "--window-size=1200,2000", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_lowrank_probe_composes_into_one_transform(data_dir: Path) -> None:
    from align.datasets import load_dataset, load_vice_embedding
    from align.metrics.probe import TripletProbe
    from align.metrics.transfer import apply_transform

    things = load_dataset("things", data_dir)
    X = load_vice_embedding(data_dir).astype(np.float64)
    basis = fit_pca(X, 8)
    Z = basis.project(X)
    probe = TripletProbe(reg=0.1, max_iter=30).fit(Z, things.triplets[:3000])
    # independent: standardise, centre, project, then the probe's own transform
    Xs = (X - X.mean()) / X.std()
    Zi = (Xs - Xs.mean(axis=0)) @ basis.components
    np.testing.assert_allclose(Z, Zi, atol=1e-10)
    expected = ((Zi - probe.mean_) / probe.std_) @ probe.weights_ @ basis.components.T
    got = apply_transform(X, compose_lowrank(basis, probe))
    np.testing.assert_allclose(got, expected, atol=1e-8)
    S = got @ got.T
    np.testing.assert_allclose(S, probe.transform(Z) @ probe.transform(Z).T, atol=1e-8)


def test_simulated_triplets_follow_the_spose_choice_model() -> None:
    E = np.array([[1.0, 0.0], [0.8, 0.3], [0.0, 1.0]])
    trip = simulate_triplets(E, np.arange(3), 6000, seed=1)
    odd = trip[:, 2]
    s_ab, s_ac, s_bc = E[0] @ E[1], E[0] @ E[2], E[1] @ E[2]
    p = np.exp([s_ab, s_ac, s_bc]) / np.exp([s_ab, s_ac, s_bc]).sum()
    freq = np.array([(odd == 2).mean(), (odd == 1).mean(), (odd == 0).mean()])
    np.testing.assert_allclose(freq, p, atol=0.02)
    assert (np.sort(trip, axis=1) == [0, 1, 2]).all()


def test_cli_report_names_a_bad_model(tmp_path, capsys) -> None:
    from align.cli import main

    code = main(["report", "timm/no_such_arch_xyz", "--out", str(tmp_path), "--no-probe"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no_such_arch_xyz" in err


# -- the claims table (issue 11): every status follows from the stored numbers -------------


def _claims_in_markdown(text: str) -> list[tuple[str, str]]:
    head = "## The paper's claims, decided by the intervals"
    assert head in text
    section = text.split(head, 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "**" in r]
    out = []
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split(" | ")]
        out.append((cells[1], cells[2].strip("*")))
    return out


def test_claims_table_statuses_follow_from_the_stored_numbers(runs: dict) -> None:
    from align.reporting.claims import STATUSES, decide_claims

    stored = json.loads((runs["root"] / "docs" / "figures" / "results.json").read_text())
    again = decide_claims(stored["results"], stored.get("objectives"), stored.get("ceiling"))
    assert [(r["claim"], r["status"]) for r in again] == [
        (r["claim"], r["status"]) for r in stored["claims"]
    ]
    table = _claims_in_markdown((runs["root"] / "docs" / "results.md").read_text())
    assert [s for _, s in table] == [r["status"] for r in again]
    assert all(s in STATUSES for _, s in table)
    by_claim = {r["claim"]: r for r in again}
    ceiling = next(r for c, r in by_claim.items() if c.startswith("The human noise ceiling"))
    lo, hi = stored["ceiling"]["ci"]
    assert ceiling["status"] == ("supported" if lo <= 0.673 <= hi else "contradicted")
    # no CLIP-like model in this run
    assert next(r for c, r in by_claim.items() if "CLIP" in c)["status"] == "not testable"


def _contrast(kind: str, zs: tuple[float, float] | None, rsa: tuple[float, float] | None) -> dict:
    c: dict = {"a": "m1", "b": "m2", "kind": kind}
    if zs is not None:
        c["zero_shot"] = {"delta": sum(zs) / 2, "ci": list(zs)}
    if rsa is not None:
        c["rsa_mur92"] = {"delta": sum(rsa) / 2, "ci": list(rsa)}
    return c


@pytest.mark.parametrize(
    ("contrasts", "expected"),
    [
        (
            [
                _contrast("objective + data", (0.02, 0.05), None),
                _contrast("scale", (-0.01, 0.01), None),
            ],
            "supported",
        ),
        (
            [
                _contrast("objective + data", (-0.01, 0.02), None),
                _contrast("architecture", (0.01, 0.03), None),
            ],
            "contradicted",
        ),
        (
            [
                _contrast("objective + data", (0.01, 0.05), None),
                _contrast("scale", (0.01, 0.02), None),
            ],
            "inconclusive",
        ),
        (
            [
                _contrast("objective + data", (-0.01, 0.02), None),
                _contrast("scale", (-0.02, 0.01), None),
            ],
            "inconclusive",
        ),
        ([_contrast("objective + data", (0.02, 0.05), None)], "not testable"),
    ],
)
def test_objective_claim_rule(contrasts: list, expected: str) -> None:
    from align.reporting.claims import claim_objective_over_architecture

    assert claim_objective_over_architecture({"contrasts": contrasts})["status"] == expected


@pytest.mark.parametrize(
    ("contrasts", "expected"),
    [
        ([_contrast("everything", (0.02, 0.05), (0.01, 0.2))], "supported"),
        ([_contrast("everything", (0.02, 0.05), (-0.2, -0.01))], "contradicted"),
        ([_contrast("everything", (-0.02, 0.05), (0.01, 0.2))], "inconclusive"),
        ([_contrast("everything", (0.02, 0.05), None)], "not testable"),
    ],
)
def test_across_datasets_claim_rule(contrasts: list, expected: str) -> None:
    from align.reporting.claims import claim_across_datasets

    assert claim_across_datasets({"contrasts": contrasts})["status"] == expected


def _net(label: str, lift_ci: tuple[float, float], delta_ci: tuple[float, float]) -> dict:
    return {
        "source": {"id": label, "label": label, "kind": "network", "control": False},
        "things": {
            "zero_shot": {"accuracy": 0.45, "ci": [0.43, 0.47]},
            "probes": {"human": {"lift": {"value": sum(lift_ci) / 2, "ci": list(lift_ci)}}},
        },
        "rsa": {
            "mur92": {
                "transfer": {"human": {"delta": sum(delta_ci) / 2, "delta_ci": list(delta_ci)}}
            }
        },
    }


def test_probe_and_transfer_rules_need_most_resolved_and_none_against() -> None:
    from align.reporting.claims import claim_probe_lift, claim_transfer

    up = [_net("a", (0.01, 0.05), (0.01, 0.1)), _net("b", (0.02, 0.06), (0.02, 0.2))]
    assert claim_probe_lift(up)["status"] == "supported"
    assert claim_transfer(up)["status"] == "supported"
    mixed = [*up, _net("c", (-0.05, -0.01), (-0.1, -0.01))]
    assert claim_probe_lift(mixed)["status"] == "inconclusive"
    down = [_net("a", (-0.05, -0.01), (-0.1, -0.02)), _net("b", (-0.04, 0.01), (-0.3, -0.1))]
    assert claim_probe_lift(down)["status"] == "inconclusive"  # one of two resolved
    assert claim_transfer(down)["status"] == "contradicted"
    assert claim_probe_lift([])["status"] == "not testable"


def test_concept_rule_compares_intervals_of_named_dimensions() -> None:
    from align.reporting.claims import claim_concepts

    def dim(k: int, name: str, ci: tuple[float, float]) -> dict:
        return {
            "dimension": k,
            "name": name,
            "match_r": 0.8,
            "accuracy": sum(ci) / 2,
            "ci": list(ci),
            "n_distinct": 20,
            "reference_accuracy": 0.6,
        }

    def best(dims: list) -> dict:
        return {"source": {"label": "net"}, "things": {"concepts": dims}}

    well = [dim(0, "food-related", (0.6, 0.7)), dim(1, "animal-related", (0.55, 0.65))]
    assert (
        claim_concepts(best([*well, dim(2, "sports-/playing-related", (0.3, 0.5))]))["status"]
        == "supported"
    )
    assert (
        claim_concepts(best([*well, dim(2, "sports-/playing-related", (0.5, 0.6))]))["status"]
        == "inconclusive"
    )
    assert (
        claim_concepts(best([*well, dim(2, "sports-/playing-related", (0.75, 0.9))]))["status"]
        == "contradicted"
    )
    assert claim_concepts(best(well))["status"] == "not testable"
