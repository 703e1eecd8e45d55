import pytest

from .fixtures import real_run as _real_run
from .fixtures import write_synthetic_run


@pytest.fixture
def synthetic_run(tmp_path):
    return write_synthetic_run(tmp_path / "run")


@pytest.fixture(scope="session")
def real_run():
    return _real_run()
