"""bench/chaos.py's scenarios, short, as tests: real service processes (fake backend), a
real redis-server, real signals, load through the client library.

- a replica SIGKILLed mid-load: with both targets, nothing is lost, some requests are sent
  again to the other replica;
- Redis restarted, then frozen with SIGSTOP, mid-load: no 5xx, and the breaker did open
  (the fault was felt);
- a decoder losing its encoder: embeds answer 503 encoder_unavailable, segments on images
  embedded before keep answering.
"""

from __future__ import annotations

import argparse
import re
import shutil

import pytest

from bench import chaos

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


def args(**overrides: object) -> argparse.Namespace:
    base = {
        "seconds": 8.0,
        "users": 4,
        "clicks": 4,
        "think": 0.05,
        "freeze": 3.0,
        "transport": "http",
        "model": False,
    }
    base.update(overrides)
    return argparse.Namespace(**base)


def test_a_killed_replica_loses_nothing_but_retried_requests() -> None:
    tally = chaos.run("kill", args())
    sent, answered = tally.total(tally.sent), tally.total(tally.answered)
    assert sent == answered and not tally.failed, tally.report("kill")
    assert tally.total(tally.answered, "after") > 0  # load went on after the kill
    assert tally.retried >= 1  # the clients that were on the killed replica moved over


def test_redis_restarted_and_frozen_gives_no_5xx() -> None:
    tally = chaos.run("redis", args(seconds=9.0))
    report = tally.report("redis")
    assert tally.server_errors() == 0, report
    assert tally.total(tally.answered, "after", "segment") > 0, report
    opened = re.search(r"breaker opened (\d+)x", report)
    assert opened and int(opened.group(1)) >= 1, report  # the freeze did reach the service


def test_a_decoder_without_its_encoder_answers_codes() -> None:
    tally = chaos.run("encoder", args())
    report = tally.report("encoder")
    before_failures = [k for k in tally.failed if k[0] == "before"]
    assert not before_failures and tally.total(tally.answered, "before", "embed") > 0, report
    after = {(op, code, status) for (phase, op, code, status) in tally.failed if phase == "after"}
    assert after == {("embed", "encoder_unavailable", "503")}, report
    # Segments on what was embedded before keep answering, every one of them.
    segments = tally.total(tally.sent, "after", "segment")
    assert segments > 0 and tally.total(tally.answered, "after", "segment") == segments, report
