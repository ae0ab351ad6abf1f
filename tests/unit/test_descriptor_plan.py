"""
How ``serve`` shares the descriptor limit between HTTP connections, device links and a reserve.
"""

from __future__ import annotations

import resource

from devicecloud.httpserver import plan_descriptors, raise_descriptor_limit


def test_http_gets_what_the_devices_and_the_reserve_leave() -> None:
    plan = plan_descriptors(100_000, reserve=1500, device_links=20_000, http_connections=None)
    assert (78_500, 20_000, None) == (plan.http_connections, plan.device_links, plan.shortfall)


def test_a_short_limit_keeps_an_http_floor_and_says_what_the_devices_lost() -> None:
    plan = plan_descriptors(20_000, reserve=1500, device_links=20_000, http_connections=None)
    assert (1024, 17_476) == (plan.http_connections, plan.device_links)
    assert plan.shortfall is not None
    assert "device links 17476 of max_device_links 20000" in plan.shortfall


def test_an_explicit_http_cap_is_kept_when_it_fits_and_cut_when_it_cannot() -> None:
    fits = plan_descriptors(10_000, reserve=1000, device_links=100, http_connections=500)
    assert (500, 100, None) == (fits.http_connections, fits.device_links, fits.shortfall)
    cut = plan_descriptors(2000, reserve=1000, device_links=100, http_connections=5000)
    assert (1000, 0) == (cut.http_connections, cut.device_links)
    assert cut.shortfall is not None
    assert "HTTP connections 1000 of http_max_connections 5000" in cut.shortfall


def test_one_half_alone_takes_everything_but_the_reserve() -> None:
    api = plan_descriptors(4096, reserve=96, device_links=20_000, http_connections=None, serve_devices=False)
    assert (4000, 0, None) == (api.http_connections, api.device_links, api.shortfall)
    devices = plan_descriptors(4096, reserve=96, device_links=1000, http_connections=None, serve_http=False)
    assert (0, 1000, None) == (devices.http_connections, devices.device_links, devices.shortfall)


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        raised = raise_descriptor_limit()
        assert raised == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert (1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)) == raised
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
