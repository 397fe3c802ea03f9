"""Word-similarity datasets ``wordsim/<name>``: pairs ``word1 word2 score``.

The 13 files (from github.com/mfaruqui/eval-word-vectors, data/word-sim) ship inside
``align/data/wordsim`` with attribution in DATA_LICENCE.md (free for research; cite the
dataset you use), so they load with no data directory; a copy in
``<data_dir>/wordsim`` is used only if the shipped file is absent. Every line is one
pair; duplicate pairs are kept (WS-353-ALL lists money/cash twice), so rows
in == pairs out. The stimuli are the unique words in order of first appearance; the
case is kept as in the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataMissingError
from .base import PACKAGE_DATA, Dataset
from .io import check_columns, data_rows, parse_float, read_lines

# id -> (file, citation)
WORDSIM: dict[str, tuple[str, str]] = {
    "men": (
        "EN-MEN-TR-3k.txt",
        "Bruni, Tran & Baroni (2014). Multimodal distributional "
        "semantics. JAIR 49. (MEN, 3,000 pairs, 0-50)",
    ),
    "simlex999": (
        "EN-SIMLEX-999.txt",
        "Hill, Reichart & Korhonen (2015). SimLex-999. Computational Linguistics 41(4).",
    ),
    "simverb3500": (
        "EN-SimVerb-3500.txt",
        "Gerz, Vulić, Hill, Reichart & Korhonen (2016). SimVerb-3500. EMNLP.",
    ),
    "ws353": (
        "EN-WS-353-ALL.txt",
        "Finkelstein et al. (2002). Placing search in context: "
        "the concept revisited. ACM TOIS 20(1). (WordSim-353)",
    ),
    "ws353-rel": (
        "EN-WS-353-REL.txt",
        "Agirre et al. (2009). A study on similarity and "
        "relatedness using distributional and WordNet-based approaches. NAACL. "
        "(WordSim-353 relatedness split)",
    ),
    "ws353-sim": (
        "EN-WS-353-SIM.txt",
        "Agirre et al. (2009). NAACL. (WordSim-353 similarity split)",
    ),
    "rw": (
        "EN-RW-STANFORD.txt",
        "Luong, Socher & Manning (2013). Better word "
        "representations with recursive neural networks for morphology. CoNLL. (RW)",
    ),
    "mturk287": (
        "EN-MTurk-287.txt",
        "Radinsky et al. (2011). A word at a time: computing "
        "word relatedness using temporal semantic analysis. WWW.",
    ),
    "mturk771": (
        "EN-MTurk-771.txt",
        "Halawi, Dror, Gabrilovich & Koren (2012). Large-scale "
        "learning of word relatedness with constraints. KDD.",
    ),
    "rg65": (
        "EN-RG-65.txt",
        "Rubenstein & Goodenough (1965). Contextual correlates of "
        "synonymy. Communications of the ACM 8(10).",
    ),
    "mc30": (
        "EN-MC-30.txt",
        "Miller & Charles (1991). Contextual correlates of semantic "
        "similarity. Language and Cognitive Processes 6(1).",
    ),
    "yp130": (
        "EN-YP-130.txt",
        "Yang & Powers (2006). Verb similarity on the taxonomy of WordNet. GWC.",
    ),
    "verb143": (
        "EN-VERB-143.txt",
        "Baker, Reichart & Korhonen (2014). An unsupervised "
        "model for instance level subcategorization acquisition. EMNLP.",
    ),
}
SOURCE_NOTE = "files via github.com/mfaruqui/eval-word-vectors (MIT); free for research"


def wordsim_file(name: str, data_dir: Path) -> Path:
    file = WORDSIM[name][0]
    shipped = PACKAGE_DATA / "wordsim" / file
    if shipped.is_file():
        return shipped
    local = data_dir / "wordsim" / file
    if local.is_file():
        return local
    raise DataMissingError(
        f"wordsim/{name}: {file} is neither shipped ({shipped}) nor in {local.parent}. "
        f"Get it from github.com/mfaruqui/eval-word-vectors data/word-sim/{file}"
    )


def read_pairs(path: Path) -> tuple[tuple[tuple[str, str], ...], np.ndarray]:
    """Pairs and scores of a ``word1 word2 score`` file (tab or whitespace separated)."""
    pairs: list[tuple[str, str]] = []
    scores: list[float] = []
    lines = read_lines(path)
    for number, fields in data_rows(path, lines, None):
        if "\t" in lines[number - 1]:  # tab-separated files may hold multi-word phrases
            fields = [f.strip() for f in lines[number - 1].strip().split("\t")]
        check_columns(fields, 3, path, number)
        scores.append(parse_float(fields[2], path, number, "score (column 3)"))
        pairs.append((fields[0], fields[1]))
    return tuple(pairs), np.asarray(scores, dtype=np.float64)


def load_wordsim(name: str, data_dir: Path) -> Dataset:
    path = wordsim_file(name, data_dir)
    pairs, scores = read_pairs(path)
    words = tuple(dict.fromkeys(w for pair in pairs for w in pair))
    return Dataset(
        id=f"wordsim/{name}",
        kind="wordsim",
        stimulus_ids=words,
        words=words,
        image_paths=None,
        pairs=pairs,
        pair_scores=scores,
        citation=WORDSIM[name][1],
        licence="free for research use; cite the dataset (" + SOURCE_NOTE + ")",
        description=f"{len(pairs)} word pairs with human similarity/relatedness scores",
        source=str(path),
    )
