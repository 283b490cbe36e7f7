"""MIT-States (Isola et al. 2015) with TIRG's noun split and query protocol.

Layout: `<root>/images/<adj noun>/*.jpg`. Folders without a space, folders named `adj <noun>` and folders
whose name is not exactly two words are skipped; only .jpg/.jpeg files are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cirlab.datasets._common import (
    SAMPLING_HELP,
    EvalQuery,
    ImageListDataset,
    ImageListOptions,
    Sampling,
    check_split,
    split_stats,
)
from cirlab.datasets.base import DATASETS, EvalSet, TrainPair
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option

#: The 49 test nouns of TIRG (google/tirg datasets.py), reused by ComposeAE; all other nouns train.
TEST_NOUNS = frozenset((
    "armor", "bracelet", "bush", "camera", "candy", "castle", "ceramic", "cheese", "clock", "clothes", "coffee",
    "fan", "fig", "fish", "foam", "forest", "fruit", "furniture", "garden", "gate", "glass", "horse", "island",
    "laptop", "lead", "lightning", "mirror", "orange", "paint", "persimmon", "plastic", "plate", "potato", "road",
    "rubber", "sand", "shell", "sky", "smoke", "steel", "stream", "table", "tea", "tomato", "vacuum", "wax",
    "wheel", "window", "wool",
))


def parse_state_folder(name: str) -> tuple[str, str] | None:
    """(adj, noun) of an image folder, or None for folders the protocol skips."""
    if " " not in name:
        return None
    words = name.split()
    if len(words) != 2 or words[0] == "adj":
        return None
    return words[0], words[1]


@dataclass
class MITStatesOptions(ImageListOptions):
    """`--dataset-option`s of mitstates."""

    complete_text_query: bool = option(False, "the text is the target's \"adj noun\" (ComposeAE's variant)")
    sampling: Sampling = option("paired", SAMPLING_HELP)


@DATASETS.register("mitstates")
class MITStatesDataset(ImageListDataset):
    """MIT-States: the text names the target adjective; R@1/5/10 plus adjective-only and noun-only recall.

    Test queries: every test image x every other adjective its noun takes; gallery = all test images; the
    query image is excluded; a hit is an image with the target's "adj noun" (kinds "adj" and "noun" count
    a hit on that word alone).
    Training pairs follow google/tirg's sampler by default (`sampling="paired"`): a source image, then two
    targets of its noun whose adjectives differ from each other (either may equal the source's own adjective,
    as in the release), emitted as two consecutive queries on the same source. `sampling="independent"` draws
    each pair on its own and always changes the adjective (cirlab <= 0.1).
    Options: `complete_text_query` (the text is "adj noun"), `sampling`, `skip_missing`.
    """

    name = "mitstates"
    Options = MITStatesOptions
    splits = ("train", "test")
    layout_hint = "<root>/images/<adj noun>/<file>.jpg"

    def __init__(self, root: str | Path, split: str, **options: Any) -> None:
        super().__init__(root, split, **options)
        check_split(self.name, split, self.splits)
        self.sampling, self.complete_text_query = self.options.sampling, self.options.complete_text_query
        folder = self.root / "images"
        if not folder.is_dir():
            raise CirlabError(f"MIT-States image folder not found: {folder}")
        self.adjs: list[str] = []
        self.nouns: list[str] = []
        for sub in sorted(os.scandir(folder), key=lambda e: e.name):
            state = parse_state_folder(sub.name)
            if state is None or not sub.is_dir() or (state[1] in TEST_NOUNS) != (split == "test"):
                continue
            for file in sorted(os.listdir(sub.path)):
                if os.path.splitext(file)[1].lower() in (".jpg", ".jpeg"):
                    self.paths.append(Path(sub.path) / file)
                    self.names.append(f"{sub.name}/{file}")
                    self.adjs.append(state[0])
                    self.nouns.append(state[1])
        if not self.paths:
            raise CirlabError(f"no MIT-States {split} images under {folder}")
        self.captions = [f"{a} {n}" for a, n in zip(self.adjs, self.nouns, strict=True)]
        self.caption_vocab = {c: i for i, c in enumerate(dict.fromkeys(self.captions))}
        self.adj_vocab = {a: i for i, a in enumerate(dict.fromkeys(self.adjs))}
        self.noun_vocab = {n: i for i, n in enumerate(dict.fromkeys(self.nouns))}
        self._index: dict[str, Any] | None = None

    def find_missing(self) -> np.ndarray:
        return np.zeros(len(self.paths), dtype=bool)  # the image list comes from a directory listing

    def _build_index(self, images: list[int]) -> dict[str, Any]:
        """caption -> images, noun -> its adjectives (first-seen order), and the images whose noun has >= 2."""
        caption_images: dict[str, list[int]] = {}
        noun_adjs: dict[str, list[str]] = {}
        for i in images:
            caption_images.setdefault(self.captions[i], []).append(i)
            adjs = noun_adjs.setdefault(self.nouns[i], [])
            if self.adjs[i] not in adjs:
                adjs.append(self.adjs[i])
        sources = np.array([i for i in images if len(noun_adjs[self.nouns[i]]) >= 2], dtype=np.int64)
        return {"caption_images": caption_images, "noun_adjs": noun_adjs, "sources": sources}

    def _training_index(self) -> dict[str, Any]:
        if self._index is None:
            self._index = self._build_index(self.usable_images(list(range(len(self)))))
            if len(self._index["sources"]) == 0:
                raise CirlabError(f"mitstates {self.split}: no noun has two adjectives; no training pairs")
        return self._index

    def query_text(self, adj: str, noun: str) -> str:
        return f"{adj} {noun}" if self.complete_text_query else adj

    def train_texts(self) -> list[str]:
        return list(self._training_index()["caption_images"])

    def sample_pairs(self, rng: np.random.Generator, n: int) -> list[TrainPair]:
        index = self._training_index()
        sources = index["sources"]
        out: list[TrainPair] = []
        while len(out) < n:
            source = int(sources[rng.integers(len(sources))])
            noun = self.nouns[source]
            adjs = index["noun_adjs"][noun]
            if self.sampling == "independent":
                others = [a for a in adjs if a != self.adjs[source]]
                chosen = [others[rng.integers(len(others))]]
            else:  # google/tirg: two target adjectives of the noun that differ from each other
                first = int(rng.integers(len(adjs)))
                second = (first + 1 + int(rng.integers(len(adjs) - 1))) % len(adjs)
                chosen = [adjs[first], adjs[second]]
            for adj in chosen[:n - len(out)]:
                targets = index["caption_images"][f"{adj} {noun}"]
                out.append(TrainPair(source, self.query_text(adj, noun), int(targets[rng.integers(len(targets))])))
        return out

    def epoch_size(self) -> int:
        """google/tirg's MITStates has one sample per training image."""
        return len(self._training_index()["sources"])

    def test_queries(self) -> list[tuple[int, str]]:
        """(source image, target adjective) for every image and every other adjective of its noun."""
        noun_adjs = self._build_index(list(range(len(self))))["noun_adjs"]
        return [(i, adj) for i in range(len(self)) for adj in noun_adjs[self.nouns[i]] if adj != self.adjs[i]]

    def build_eval_sets(self) -> list[EvalSet]:
        queries = [EvalQuery(i, self.query_text(adj, self.nouns[i]),
                             {"caption": self.caption_vocab[f"{adj} {self.nouns[i]}"], "adj": self.adj_vocab[adj],
                              "noun": self.noun_vocab[self.nouns[i]]})
                   for i, adj in self.test_queries()]
        labels = {"caption": np.array([self.caption_vocab[c] for c in self.captions], dtype=np.int64),
                  "adj": np.array([self.adj_vocab[a] for a in self.adjs], dtype=np.int64),
                  "noun": np.array([self.noun_vocab[n] for n in self.nouns], dtype=np.int64)}
        text = "'adj noun'" if self.complete_text_query else "target adjective"
        return [self.assemble(
            self.split, queries, list(range(len(self))), labels, exclude_source=True, target_must_exist=False,
            ks=(1, 5, 10),
            protocol=f"TIRG MIT-States: 49 test nouns, text = {text}, gallery = all test images, query image "
                     "excluded, hit = same 'adj noun' (adj_/noun_recall: same word)")]

    def stats(self) -> dict[str, Any]:
        index = self._build_index(list(range(len(self))))
        if self.split == "train":
            pairs = sum(len(index["noun_adjs"][self.nouns[i]]) - 1 for i in index["sources"])
            return split_stats(training_pairs=pairs, images=len(self), nouns=len(index["noun_adjs"]),
                               states=len(index["caption_images"]))
        return split_stats(queries=len(self.test_queries()), gallery=len(self), images=len(self),
                           nouns=len(index["noun_adjs"]), states=len(index["caption_images"]))
