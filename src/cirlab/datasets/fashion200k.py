"""Fashion200k (Han et al. 2017) with TIRG's query protocol.

Layout: `<root>/labels/*.txt` (a file belongs to a split when its name contains `train` / `test`), each line
`image_path \\t detection_score \\t caption`; images at `<root>/<image_path>` (`women/<category>/...jpeg`);
`<root>/test_queries.txt` lists TIRG's 33,480 `source_path target_path` test queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cirlab.datasets._common import (
    EvalQuery,
    ImageListDataset,
    ImageListOptions,
    check_split,
    read_text_lines,
    split_stats,
)
from cirlab.datasets.base import DATASETS, EvalSet, TrainPair
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option

#: TIRG's caption escaping: these characters become words so that tokenisers keep them.
CAPTION_ESCAPES = ((".", "dotmark"), ("?", "questionmark"), ("&", "andmark"), ("*", "starmark"))


def escape_caption(text: str) -> str:
    """Strip a caption and spell out `.`, `?`, `&`, `*` as TIRG's loader does."""
    text = text.strip()
    for char, word in CAPTION_ESCAPES:
        text = text.replace(char, word)
    return text


def replace_phrase(source_caption: str, target_caption: str) -> str:
    """`replace <first source word not in target> with <first target word not in source>`.

    As in TIRG, a side whose words all occur in the other caption contributes its last word.
    """
    src, tgt = source_caption.split(), target_caption.split()
    src_word = next((w for w in src if w not in tgt), src[-1] if src else "")
    tgt_word = next((w for w in tgt if w not in src), tgt[-1] if tgt else "")
    return f"replace {src_word} with {tgt_word}"


def parent_captions(caption: str) -> list[str]:
    """The captions one word shorter: `caption` with every occurrence of one of its words removed.

    TIRG's loader removes the word as a substring (`caption.replace(word, "")`), which also cuts it out of
    longer words ("red" out of "shredded"); whole words are removed here, as the paper describes.
    """
    words = caption.split()
    return list(dict.fromkeys(" ".join(t for t in words if t != w) for w in words))


@dataclass
class Fashion200kOptions(ImageListOptions):
    """`--dataset-option`s of fashion200k."""

    complete_text_query: bool = option(False, "ComposeAE: the text is the target caption instead of the replace "
                                              "phrase")


@DATASETS.register("fashion200k")
class Fashion200kDataset(ImageListDataset):
    """Fashion200k: caption-equality hits, the query image excluded, R@1/10/50.

    Training pairs (TIRG): a caption's parents are its one-word-shorter versions; images whose caption
    shares a parent with another caption are modifiable; a pair is a modifiable image, a sibling caption
    through one of its parents, and a random image with that caption.
    Options: `complete_text_query` (ComposeAE: the text is the target caption instead of the replace
    phrase), `skip_missing`.
    """

    name = "fashion200k"
    Options = Fashion200kOptions
    splits = ("train", "test")
    layout_hint = "<root>/<image_path of the label file>, e.g. <root>/women/dresses/.../<id>_0.jpeg"

    def __init__(self, root: str | Path, split: str, **options: Any) -> None:
        super().__init__(root, split, **options)
        check_split(self.name, split, self.splits)
        self.complete_text_query = self.options.complete_text_query
        self.captions: list[str] = []
        for path in self._label_files():
            for line_no, line in read_text_lines(path, "Fashion200k label file"):
                fields = line.split("\t")
                if len(fields) < 3 or not fields[0].strip() or not escape_caption(fields[2]):
                    raise CirlabError(f"malformed line {line_no} in {path}: expected "
                                      f"'image_path<TAB>detection_score<TAB>caption', got {line[:80]!r}")
                self.names.append(fields[0].strip())
                self.captions.append(escape_caption(fields[2]))
        if not self.names:
            raise CirlabError(f"no Fashion200k {split} images listed in {self.root / 'labels'}")
        self.paths = [self.root / n for n in self.names]
        ids = {c: i for i, c in enumerate(dict.fromkeys(self.captions))}
        self.caption_ids = np.array([ids[c] for c in self.captions], dtype=np.int64)
        self._index: dict[str, Any] | None = None

    def _label_files(self) -> list[Path]:
        folder = self.root / "labels"
        if not folder.is_dir():
            raise CirlabError(f"Fashion200k label folder not found: {folder}")
        files = sorted(p for p in folder.iterdir() if p.is_file() and self.split in p.name)
        if not files:
            raise CirlabError(f"no Fashion200k label file with {self.split!r} in its name in {folder}")
        return files

    def query_text(self, source: int, target: int) -> str:
        if self.complete_text_query:
            return self.captions[target]
        return replace_phrase(self.captions[source], self.captions[target])

    # training -----------------------------------------------------------------------------------
    def _build_index(self, images: list[int]) -> dict[str, Any]:
        """Caption -> images, parent -> child captions, image -> parents with >= 2 children."""
        caption_images: dict[int, list[int]] = {}
        for i in images:
            caption_images.setdefault(int(self.caption_ids[i]), []).append(i)
        children: dict[str, list[int]] = {}
        for cid, images_of in caption_images.items():
            for parent in parent_captions(self.captions[images_of[0]]):
                children.setdefault(parent, []).append(cid)
        caption_parents: dict[int, list[str]] = {}
        for parent, kids in children.items():
            if len(kids) >= 2:
                for cid in kids:
                    caption_parents.setdefault(cid, []).append(parent)
        sources = np.array([i for i in images if int(self.caption_ids[i]) in caption_parents], dtype=np.int64)
        return {"caption_images": caption_images, "children": children, "caption_parents": caption_parents,
                "sources": sources}

    def _training_index(self) -> dict[str, Any]:
        if self._index is None:
            self._index = self._build_index(self.usable_images(list(range(len(self)))))
            if len(self._index["sources"]) == 0:
                raise CirlabError(f"fashion200k {self.split}: no two captions differ by one word; "
                                  "no training pairs can be formed")
        return self._index

    def train_texts(self) -> list[str]:
        index = self._training_index()
        captions = [self.captions[imgs[0]] for imgs in index["caption_images"].values()]
        return captions if self.complete_text_query else [*captions, "replace with"]

    def epoch_size(self) -> int:
        """google/tirg's (and CRN's) Fashion200k has one sample per training image."""
        return len(self._training_index()["sources"])

    def sample_pairs(self, rng: np.random.Generator, n: int) -> list[TrainPair]:
        index = self._training_index()
        sources, parents_of = index["sources"], index["caption_parents"]
        out = []
        for _ in range(n):
            source = int(sources[rng.integers(len(sources))])
            own = int(self.caption_ids[source])
            parents = parents_of[own]
            while True:
                siblings = index["children"][parents[rng.integers(len(parents))]]
                caption = siblings[rng.integers(len(siblings))]
                if caption != own:
                    break
            targets = index["caption_images"][caption]
            target = targets[rng.integers(len(targets))]
            out.append(TrainPair(source, self.query_text(source, target), target))
        return out

    # evaluation ---------------------------------------------------------------------------------
    def test_queries(self) -> list[tuple[int, int]]:
        """(source, target) image indices from `test_queries.txt` (a path listed twice maps to its last line)."""
        path = self.root / "test_queries.txt"
        index = {n: i for i, n in enumerate(self.names)}
        out = []
        for line_no, line in read_text_lines(path, "Fashion200k test query list"):
            fields = line.split()
            if len(fields) != 2:
                raise CirlabError(f"malformed line {line_no} in {path}: expected 'source_path target_path'")
            unknown = [f for f in fields if f not in index]
            if unknown:
                raise CirlabError(f"line {line_no} of {path}: {unknown[0]} is not a {self.split} image of "
                                  f"{self.root / 'labels'}")
            out.append((index[fields[0]], index[fields[1]]))
        return out

    def build_eval_sets(self) -> list[EvalSet]:
        queries = [EvalQuery(s, self.query_text(s, t), {"caption": int(self.caption_ids[t])}, target=t)
                   for s, t in self.test_queries()]
        text = "target caption" if self.complete_text_query else "'replace X with Y'"
        return [self.assemble(
            self.split, queries, list(range(len(self))), {"caption": self.caption_ids},
            exclude_source=True, target_must_exist=False, ks=(1, 10, 50),
            protocol=f"TIRG Fashion200k: test_queries.txt, text = {text}, gallery = all test images, "
                     "query image excluded, hit = same caption")]

    def stats(self) -> dict[str, Any]:
        missing = self.missing_mask()
        if self.split == "train":
            index = self._build_index([i for i in range(len(self)) if not missing[i]])
            pairs = 0
            for cid, parents in index["caption_parents"].items():
                siblings = {c for p in parents for c in index["children"][p]} - {cid}
                pairs += len(index["caption_images"][cid]) * len(siblings)
            return split_stats(training_pairs=pairs, images=len(self), missing_images=int(missing.sum()),
                               modifiable_images=len(index["sources"]))
        queries = self.test_queries()
        return split_stats(queries=len(queries), gallery=len(self), images=len(self),
                           missing_images=int(missing.sum()),
                           missing_queries=sum(bool(missing[s]) for s, _ in queries))
