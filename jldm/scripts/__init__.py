"""The command-line tools: jldm-train and jldm-sample (train.py and sample.py in a clone)."""
