"""Fixtures of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
    """A tiny generated ListOps set (64/16/16 expressions of 5-30 tokens)."""
    from serpent_ssm.data.listops import generate_listops

    root = tmp_path_factory.mktemp("data")
    generate_listops(root, n_train=64, n_val=16, n_test=16, min_len=5, max_len=30, seed=0)
    return root
