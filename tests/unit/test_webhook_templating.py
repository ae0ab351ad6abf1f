"""
The request a hook makes for an event, and the events its response becomes: catalogue §10.2 case by case
(method, URL, query, headers, content type, body), byte for byte where the catalogue gives the bytes.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from devicecloud.domain.webhooks import HookEvent, WebhookConfig
from devicecloud.webhooks.templating import (
    TemplateError,
    build_request,
    check_templates,
    error_events,
    response_events,
)

DEVICE = "3f002b000d47343432313031"
PUBLISHED = datetime(2017, 2, 1, 21, 8, 5, 763000, tzinfo=UTC)
AGENT = "ParticleBot/1.1 (https://docs.particle.io/webhooks)"


def event(name: str = "demo", data: str | None = "mydata", **extra: Any) -> HookEvent:
    return HookEvent(
        id="e1", name=name, data=data, coreid=DEVICE, published_at=PUBLISHED, device_id=DEVICE, **extra
    )


def hook(**fields: Any) -> WebhookConfig:
    return WebhookConfig(**{"event": "demo", "url": "https://example.com/in", **fields})


def headers(config: WebhookConfig, ev: HookEvent | None = None) -> dict[str, str]:
    return dict(build_request(config, ev or event()).headers)


def query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def test_only_event_and_url_posts_the_default_form() -> None:
    request = build_request(hook(), event())
    assert ("POST", "https://example.com/in") == (request.method, request.url)
    assert (
        b"event=demo&data=mydata&published_at=2017-02-01T21%3A08%3A05.763Z&coreid=3f002b000d47343432313031"
        == request.body
    )
    assert {"User-Agent": AGENT, "Content-Type": "application/x-www-form-urlencoded"} == dict(request.headers)


def test_get_puts_the_defaults_in_the_query_string() -> None:
    request = build_request(hook(request_type="GET", url="https://example.com/in?key=1"), event())
    assert ("GET", None) == (request.method, request.body)
    assert [
        ("key", "1"),
        ("event", "demo"),
        ("data", "mydata"),
        ("published_at", "2017-02-01T21:08:05.763Z"),
        ("coreid", DEVICE),
    ] == query(request.url)
    assert {"User-Agent": AGENT} == dict(request.headers)


def test_json_object_gets_the_defaults_added_and_json_headers() -> None:
    request = build_request(hook(json={"value": "{{{PARTICLE_EVENT_VALUE}}}", "event": "mine"}), event())
    assert {
        "event": "mine",
        "data": "mydata",
        "published_at": "2017-02-01T21:08:05.763Z",
        "coreid": DEVICE,
        "value": "mydata",
    } == json.loads(request.body or b"")
    assert "application/json" == dict(request.headers)["Content-Type"]
    assert "application/json" == dict(request.headers)["Accept"]


def test_no_defaults_sends_only_what_is_configured() -> None:
    request = build_request(hook(json={"v": "{{PARTICLE_EVENT_VALUE}}"}, no_defaults=True), event())
    assert b'{"v":"mydata"}' == request.body
    form = build_request(hook(form={"v": "{{PARTICLE_EVENT_VALUE}}"}, no_defaults=True), event())
    assert b"v=mydata" == form.body
    get = build_request(hook(request_type="GET", no_defaults=True), event())
    assert ([], None) == (query(get.url), get.body)


def test_json_string_template_renders_then_parses_numbers_stay_numbers() -> None:
    config = hook(json='{"temp": {{temp}}, "unit": "{{unit}}"}', no_defaults=True)
    request = build_request(config, event(data='{"temp": 21.5, "unit": "C"}'))
    assert {"temp": 21.5, "unit": "C"} == json.loads(request.body or b"")


def test_json_string_that_does_not_render_json_is_an_error() -> None:
    with pytest.raises(TemplateError, match="valid JSON"):
        build_request(hook(json="{{{PARTICLE_EVENT_VALUE}}"), event(data="not json"))


def test_form_with_defaults_and_query_with_defaults() -> None:
    form = build_request(hook(form={"a": "{{PARTICLE_EVENT_NAME}}"}), event())
    assert [("event", "demo"), ("data", "mydata"), ("published_at", "2017-02-01T21:08:05.763Z")] == parse_qsl(
        (form.body or b"").decode()
    )[:3]
    assert ("a", "demo") in parse_qsl((form.body or b"").decode())
    queried = build_request(hook(query={"q": "{{PARTICLE_EVENT_VALUE}}"}), event())
    assert ("q", "mydata") in query(queried.url)
    assert ("event", "demo") in query(queried.url)
    assert queried.body is None  # the query carries the defaults: no default form body as well


def test_custom_body_sets_no_content_type() -> None:
    request = build_request(hook(body="<v>{{{PARTICLE_EVENT_VALUE}}}</v>", request_type="PUT"), event())
    assert ("PUT", b"<v>mydata</v>") == (request.method, request.body)
    assert "Content-Type" not in dict(request.headers)


def test_headers_and_basic_auth_are_templates() -> None:
    config = hook(
        headers={"X-Device": "{{PARTICLE_DEVICE_ID}}", "Content-Type": "text/plain"},
        auth={"username": "{{PARTICLE_EVENT_NAME}}", "password": "s3cret"},
    )
    sent = headers(config)
    assert DEVICE == sent["X-Device"]
    assert "text/plain" == sent["Content-Type"]  # the user's header wins over the default
    assert "Basic " + base64.b64encode(b"demo:s3cret").decode() == sent["Authorization"]
    logged = build_request(config, event()).log_entry()["headers"]
    assert ("[redacted]", DEVICE) == (logged["Authorization"], logged["X-Device"])  # logs keep no credentials


def test_escaping_paths_indexes_and_sections() -> None:
    data = json.dumps({"a": {"b": "x&<y>\"'"}, "c": [{"ca": "zero"}, {"ca": "one"}], "on": True, "n": 5.0})
    config = hook(
        body="{{a.b}}|{{{a.b}}}|{{c.0.ca}}|{{c.1.ca}}|{{#c}}[{{ca}}]{{/c}}|{{^missing}}none{{/missing}}|{{on}}|{{n}}",
        no_defaults=True,
    )
    request = build_request(config, event(data=data))
    assert b"x&amp;&lt;y&gt;&quot;&#x27;|x&<y>\"'|zero|one|[zero][one]|none|true|5" == request.body


def test_predefined_variables_and_aliases_win_over_event_data() -> None:
    config = hook(
        body="{{PARTICLE_DEVICE_ID}} {{PARTICLE_EVENT_NAME}} {{PARTICLE_EVENT_ID}} {{SPARK_EVENT_VALUE}} "
        "{{SPARK_CORE_ID}} {{PARTICLE_PUBLISHED_AT}} {{PARTICLE_EVENT_BASE64}} [{{PRODUCT_ID}}]",
        no_defaults=True,
    )
    spoof = json.dumps({"PARTICLE_DEVICE_ID": "spoofed"})
    body = (build_request(config, event(data=spoof)).body or b"").decode()
    b64 = base64.b64encode(spoof.encode()).decode()
    escaped = spoof.replace('"', "&quot;")
    assert f"{DEVICE} demo e1 {escaped} {DEVICE} 2017-02-01T21:08:05.763Z {b64} []" == body


def test_url_and_query_templates() -> None:
    config = hook(
        url="https://example.com/{{PARTICLE_DEVICE_ID}}/x?fixed=1",
        request_type="GET",
        query={"t": "{{temp}}"},
        no_defaults=True,
    )
    request = build_request(config, event(data='{"temp": "20 C"}'))
    assert f"https://example.com/{DEVICE}/x?fixed=1&t=20+C" == request.url
    assert "example.com" == request.host


def test_bad_templates_are_found_at_create_time() -> None:
    check_templates(hook(json={"a": "{{x}}"}))
    with pytest.raises(TemplateError):
        check_templates(hook(json={"a": "{{#x}}"}))
    with pytest.raises(TemplateError):
        check_templates(hook(url="https://example.com/{{#open}}"))


# ------------------------------------------------------------------------------------------------ responses


def test_a_1300_byte_response_is_three_chunks() -> None:
    body = bytes(range(65, 91)) * 50  # 1,300 ASCII bytes
    events = response_events(hook(), event(), body)
    assert ["hook-response/demo/0", "hook-response/demo/1", "hook-response/demo/2"] == [n for n, _ in events]
    assert [512, 512, 276] == [len(d) for _, d in events]
    assert body.decode() == "".join(d for _, d in events)


def test_chunks_never_split_a_character_and_stop_at_100_kb() -> None:
    body = ("é" * 300).encode()  # 600 bytes of two-byte characters
    chunks = [d for _, d in response_events(hook(), event(), body)]
    assert ["é" * 256, "é" * 44] == chunks
    big = response_events(hook(), event(), b"x" * 200_000)
    assert 100 * 1024 == sum(len(d) for _, d in big)
    assert 200 == len(big)


def test_response_topic_and_template() -> None:
    config = hook(
        response_topic="{{PARTICLE_DEVICE_ID}}/reply",
        response_template="{{main.temp}} at {{PARTICLE_EVENT_NAME}}",
    )
    events = response_events(config, event(), b'{"main": {"temp": 12.5}}')
    assert ((f"{DEVICE}/reply/0", "12.5 at demo"),) == events
    unchunked = response_events(hook(unchunked=True), event(), b"y" * 1300)
    assert [("hook-response/demo/0", "y" * 1300)] == list(unchunked)


def test_error_events_use_the_error_topic() -> None:
    assert (("hook-error/demo/0", "error status 404 from example.com"),) == error_events(
        hook(), event(), "error status 404 from example.com"
    )
    custom = error_events(hook(error_response_topic="oops/{{PARTICLE_EVENT_NAME}}"), event(), "boom")
    assert (("oops/demo/0", "boom"),) == custom
