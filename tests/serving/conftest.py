"""Shared fixtures: one read-only serving world per session (tests that publish build their own)."""

from __future__ import annotations

import pytest

from serving.reload import StateHolder
from serving.state import ServingState
from tests.serving.world import World, build_world


def pytest_configure(config: pytest.Config) -> None:
    from serving.app import apply_threads

    apply_threads(1)  # OpenMP spinning on 2 shared cores costs more than it gives for tiny tensors


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # starlette's TestClient asks for httpx2; the notice is not about this project
        item.add_marker(pytest.mark.filterwarnings("ignore:.*httpx2.*"))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="session")
def holder(world: World) -> StateHolder:
    return StateHolder.open(world.config())


@pytest.fixture(scope="session")
def state(holder: StateHolder) -> ServingState:
    return holder.state


@pytest.fixture(scope="session")
def client(holder: StateHolder):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(holder)) as c:
        yield c
