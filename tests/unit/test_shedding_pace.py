"""How long shed callers are told to stay away (api/overload.py RetryAfterPacer), and the gateway's
open-files limit for its long-poll sockets (core/open_files.py)."""

from __future__ import annotations

import resource

import pytest

from api.overload import RetryAfterPacer
from core.open_files import raise_open_files_limit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lone_shed_request_is_told_one_second():
    pacer = RetryAfterPacer(clock=Clock())
    for _ in range(10):
        pacer.served()
    assert pacer.shed() == "1"


def test_retry_after_grows_with_the_share_shed_so_retries_alone_cannot_overload():
    clock = Clock()
    pacer = RetryAfterPacer(max_s=30, clock=clock)
    for _ in range(100):
        pacer.served()
    answers = [int(pacer.shed()) for _ in range(400)]
    # 1 + shed // served: shed callers come back at most as fast as the gateway serves.
    assert answers[0] == 1 and answers[99] == 2 and answers[199] == 3 and answers[-1] == 5
    assert answers == sorted(answers)


def test_nothing_served_means_one_second_per_shed_caller_up_to_the_cap():
    pacer = RetryAfterPacer(max_s=10, clock=Clock())
    assert [pacer.shed() for _ in range(3)] == ["2", "3", "4"]
    for _ in range(50):
        last = pacer.shed()
    assert last == "10"


def test_the_overload_is_forgotten_after_the_window():
    clock = Clock()
    pacer = RetryAfterPacer(window_s=5, max_s=30, clock=clock)
    pacer.served()
    for _ in range(20):
        pacer.shed()
    assert pacer.shed() == "22"
    clock.now += 3
    pacer.served()
    assert int(pacer.shed()) > 1  # still inside the window
    clock.now += 5
    pacer.served()
    pacer.served()
    assert pacer.shed() == "1"


def test_the_configured_minimum_and_bad_bounds():
    assert RetryAfterPacer(min_s=3, max_s=30, clock=Clock()).shed() == "3"
    with pytest.raises(ValueError):
        RetryAfterPacer(min_s=5, max_s=2)
    with pytest.raises(ValueError):
        RetryAfterPacer(min_s=0)


@pytest.fixture
def restore_nofile():
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield before
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_the_open_files_limit_is_raised_to_fit_but_never_past_the_hard_limit(restore_nofile):
    soft, hard = restore_nofile
    if hard != resource.RLIM_INFINITY and hard < 300:
        pytest.skip(f"hard open-files limit {hard} leaves no room to test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    assert raise_open_files_limit(290) == (256, 290)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 290
    assert raise_open_files_limit(100) == (290, 290)  # never lowered
    if hard != resource.RLIM_INFINITY:
        assert raise_open_files_limit(hard + 10_000) == (290, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def _backlog(**settings):
    from api.backlog import StartBacklog
    from core.config import Settings

    return StartBacklog(Settings(_env_file=None, **settings))


def test_new_orders_are_refused_only_while_the_backlog_is_older_than_the_limit():
    backlog = _backlog(api_max_start_delay_s=10, api_max_retry_after_s=30)
    assert backlog.refusal() is None  # not checked yet: nothing is refused on an unknown
    backlog.age_s = 9.5
    assert backlog.refusal() is None
    backlog.age_s, backlog.count, backlog.dispatch_rate = 12.2, 40, 20.0
    refusal = backlog.refusal()
    assert refusal is not None and refusal.retry_after_s == 3  # not before the age is under the limit
    assert "12 s" in refusal.detail and "Idempotency-Key" in refusal.detail
    backlog.count = 130
    assert backlog.refusal().retry_after_s == 7  # when what is queued now is worked off: 130 / 20 per s
    backlog.dispatch_rate = 0.0  # no worker takes anything
    assert backlog.refusal().retry_after_s == 30  # capped like every other Retry-After
    backlog.age_s = None  # Temporal could not be asked
    assert backlog.refusal() is None


def test_admission_control_can_be_switched_off():
    backlog = _backlog(api_max_start_delay_s=0)
    backlog.age_s = 1e6
    assert not backlog.enabled and backlog.refusal() is None
