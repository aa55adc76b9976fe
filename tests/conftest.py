"""Shared test setup: 8 simulated CPU devices, quiet TF, and the real datasets beside the project."""
import os
import pathlib

# Must happen before jax is imported anywhere: tests of sharding need 8 devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> pathlib.Path:
  """../shared/datasets, or a skip with the reason when it is absent."""
  if not SHARED_DATASETS.is_dir():
    pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
  return SHARED_DATASETS
