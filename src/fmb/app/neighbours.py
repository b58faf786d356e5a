"""Each object's nearest neighbours per model and modality, from the run's similarity indexes
(`fmb.analyze.similarity`): loaded when first asked, rebuilt when older than the embeddings or when
they cannot be read (an index is a cache of the embeddings, never a reason for a page to fail)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fmb.app.tables import finite_or_none
from fmb.config import ResolvedConfig
from fmb.errors import FmbError
from fmb.layout import SimilarityFiles

log = logging.getLogger("fmb.app")


class Neighbours:
    """Each object's nearest neighbours per model and modality, from the run's similarity indexes
    (`fmb.analyze.similarity`), loaded when first asked; an index older than its embeddings is rebuilt."""

    def __init__(self, config: ResolvedConfig):
        self.config = config
        self._indexes: dict[str, dict] | None = None
        self._loading = threading.Lock()

    def of(self, object_id: int) -> dict:
        k = self.config.analyze.similarity.k
        found = {}
        for model, indexes in self.indexes().items():
            found[model] = {modality: self._nearest(index, object_id, k) for modality, index in indexes.items()}
        return found

    @staticmethod
    def _nearest(index, object_id: int, k: int) -> list[dict]:
        try:
            ids, similarities = index.query_ids([object_id], k)
        except FmbError:  # not embedded by this model (it failed its checks for this modality)
            return []
        return [{"object_id": str(i), "similarity": finite_or_none(s)} for i, s in zip(ids[0], similarities[0]) if i >= 0]

    def indexes(self) -> dict[str, dict]:
        with self._loading:
            if self._indexes is None:
                from fmb.embed.store import embedded_models

                self._indexes = {model: self._model_indexes(model) for model in embedded_models(self.config)}
                import faiss

                # from now on the app asks for one object's neighbours at a time: an OpenMP team costs more
                # than the search (3 indexes of 10,000 objects: 1-2 ms on one thread, 15-80 ms on two, loaded)
                faiss.omp_set_num_threads(1)
            return self._indexes

    def _model_indexes(self, model: str) -> dict:
        """The saved indexes when each is newer than the embeddings, else `current_index` (which
        reuses a saved index built from these very embeddings, and builds the others)."""
        from fmb.analyze.similarity import SimilarityIndex, current_index
        from fmb.embed.store import load_embeddings, read_manifest

        embeddings = self.config.layout.embeddings(model)
        modalities = tuple(read_manifest(embeddings.manifest)["signature"]["dims"])
        directories = {modality: self.config.layout.similarity.index_dir(model, modality) for modality in modalities}
        made = embeddings.manifest.stat().st_mtime
        nprobe = self.config.analyze.similarity.nprobe
        if all(_saved_after(directory, made) for directory in directories.values()):
            try:
                return {modality: SimilarityIndex.load(directory, nprobe) for modality, directory in directories.items()}
            except FmbError as reason:  # a damaged index is a cache: built again below, never a failed page
                log.warning("%s: %s; rebuilding its similarity index", model, reason)
        ids, matrices = load_embeddings(embeddings.dir, modalities)
        return {modality: current_index(self.config, model, modality, ids, vectors, log.info)
                for modality, vectors in matrices.items()}


def _saved_after(directory: Path, time: float) -> bool:
    meta = SimilarityFiles.index_files(directory)[2]  # written last: its presence means a whole index
    return meta.is_file() and meta.stat().st_mtime >= time
