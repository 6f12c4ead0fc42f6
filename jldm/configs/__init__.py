"""The bundled configs: --config configs/NAME.py in a clone (configs/ links here), or --config
NAME with the installed jldm-train."""
