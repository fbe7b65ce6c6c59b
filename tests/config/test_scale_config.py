"""server.workers and [state] (SPEC 0.2, Scale)."""

from __future__ import annotations

import os

import pytest

from mailgate.config import parse_config
from tests.config.test_config import problems_of, with_sections


def test_workers_default_to_one_and_auto_means_one_per_cpu() -> None:
    assert parse_config(with_sections()).server.workers == 1
    assert parse_config(with_sections(server={"workers": "auto"})).server.workers == (os.cpu_count() or 1)
    assert parse_config(with_sections(server={"workers": 3})).server.workers == 3


@pytest.mark.parametrize("value", [0, -1, "two", 1.5])
def test_workers_must_be_a_positive_count_or_auto(value: object) -> None:
    assert [p for p in problems_of(with_sections(server={"workers": value})) if p.startswith("server.workers:")]


def test_state_defaults_to_memory_with_a_30_second_fallback() -> None:
    state = parse_config(with_sections()).state
    assert (state.backend, state.fallback_seconds) == ("memory", 30.0)


def test_state_backend_takes_a_redis_url() -> None:
    config = parse_config(with_sections(state={"backend": "redis://10.0.0.5:6380/2", "fallback_time": "1m"}))
    assert (config.state.backend, config.state.fallback_seconds) == ("redis://10.0.0.5:6380/2", 60.0)


@pytest.mark.parametrize("value", ["redis", "http://x:1/0", "redis://:6379/0", "redis://h:99999/0", "redis://h/x"])
def test_state_backend_other_than_memory_or_redis_url_is_refused_naming_the_key(value: str) -> None:
    problems = problems_of(with_sections(state={"backend": value}))
    assert [p for p in problems if p.startswith("state.backend:")], problems
