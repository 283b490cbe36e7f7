"""Gallery indexes: encode once with a trained run, then answer composed queries (exact or FAISS search)."""

from cirlab.index.gallery import GalleryItem, GallerySource, is_valid_id, source_from_dataset, source_from_directory
from cirlab.index.retriever import Hit, Query, Retriever
from cirlab.index.searchers import SEARCHERS, Searcher, choose_kind, make_searcher
from cirlab.index.store import GalleryIndex, IndexSummary, build_index

__all__ = ["SEARCHERS", "GalleryIndex", "GalleryItem", "GallerySource", "Hit", "IndexSummary", "Query", "Retriever",
           "Searcher", "build_index", "choose_kind", "is_valid_id", "make_searcher", "source_from_dataset",
           "source_from_directory"]
