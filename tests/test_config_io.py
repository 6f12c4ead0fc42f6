"""The workdir's config guard: architecture changes are refused, runtime-only keys are not."""

import pytest

from jldm.errors import UserError
from jldm.runs.config_io import read_config, write_config
from tests.tiny import tiny_config


def test_remat_may_change_on_resume_but_the_architecture_may_not(tmp_path):
    workdir = str(tmp_path)
    write_config(workdir, tiny_config("/data"))
    write_config(workdir, tiny_config("/data", **{"model.remat": True}))
    assert read_config(workdir).model.remat is True
    with pytest.raises(UserError, match="model.channels"):
        write_config(workdir, tiny_config("/data", **{"model.channels": 16}))
    assert read_config(workdir).model.channels == 8  # the refused call wrote nothing
