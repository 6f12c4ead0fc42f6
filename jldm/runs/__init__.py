"""A run on disk: its workdir, config file, checkpoints, kind, and reading it back.

Below both jldm.train and jldm.sampling, so reading a run never imports training code. Import
the modules themselves (jldm.runs.load, jldm.runs.checkpoint, ...): this package imports
nothing, so jldm.build can read jldm.runs.kinds without a cycle.
"""
