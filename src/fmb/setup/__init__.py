"""Preparing machines: `fmb setup download` fetches everything a run reads from the Hugging Face hub
into its cache on a machine with network (a login node) and writes a lock file of the commits and
file hashes; `fmb setup check` verifies, offline, what a compute node has: Python, torch and its
CUDA, the GPU, the packages, each cached weight (loaded through the models' own code, hashed against
the lock), the dataset cache and free disk.

    lock.py      the lock file (repository, commit, file -> sha256)
    needs.py     what a configuration reads from the hub: model files (`Encoder.hub_files`), the dataset
    download.py  fetch them at pinned revisions and write the lock
    cache.py     verify the cache against the lock and load every model from it, offline
    check.py     the environment checks and the report
"""
