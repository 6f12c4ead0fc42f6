"""Train a diffusion model: python train.py --config configs/digits_ddpm.py --workdir runs/x.

The same command as `jldm-train`, which `pip install` puts on the PATH: jldm/scripts/train.py.
"""

from jldm.scripts.train import FLAGS, main, run  # noqa: F401

if __name__ == "__main__":
    run()
