"""Fixtures for the static deployment checks; helpers live in deploy_checks.py."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_checks import K8S, OVERLAYS, render


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


@pytest.fixture(scope="session")
def gpu_docs() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "gpu")


@pytest.fixture(scope="session")
def cpu_docs() -> list[dict[str, Any]]:
    return render(K8S / "overlays" / "cpu")
