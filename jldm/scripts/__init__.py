"""The command-line tools, the only modules with flags: jldm-train and jldm-sample (train.py and
sample.py in a clone), jldm-fid (python -m jldm.eval.fid) and jldm-compare (python -m jldm.compare).
"""
