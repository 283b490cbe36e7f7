"""Gallery indexes: encode once with a trained run, then answer composed queries (exact or FAISS search)."""

from cirlab.index.gallery import GalleryItem, GallerySource, is_valid_id, source_from_dataset, source_from_directory
from cirlab.index.retriever import ComposedQuery, Hit, Retriever
from cirlab.index.searchers import SEARCHERS, Searcher, choose_kind, make_searcher
from cirlab.index.store import GalleryIndex, IndexSummary, build_index

__all__ = ["SEARCHERS", "ComposedQuery", "GalleryIndex", "GalleryItem", "GallerySource", "Hit", "IndexSummary",
           "Retriever", "Searcher", "build_index", "choose_kind", "is_valid_id", "make_searcher", "source_from_dataset",
           "source_from_directory"]
