"""Sample a trained run: python sample.py --workdir runs/x --out runs/x/samples.

The same command as `jldm-sample`, which `pip install` puts on the PATH: jldm/scripts/sample.py.
"""

from jldm.scripts.sample import FLAGS, main, run  # noqa: F401

if __name__ == "__main__":
    run()
