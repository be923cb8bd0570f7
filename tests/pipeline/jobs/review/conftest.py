from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline.jobs.review.data import ReviewData, make_review_data


@pytest.fixture(scope="session")
def review_data(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> ReviewData:
    """The quarantine dataset all console tests read (decisions go to each test's own directory)."""
    import torch

    torch.set_num_threads(1)
    return make_review_data(tmp_path_factory.mktemp("review-data"), tiny_model_dir)
