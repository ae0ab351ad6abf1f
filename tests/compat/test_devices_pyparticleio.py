"""
pyparticleio, unchanged, against a running devicecloud: log in, list devices by name, call functions, read
variables on the demo device.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyparticleio.ParticleCloud import ParticleCloud
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def cloud(server: LiveServer) -> Iterator[ParticleCloud]:
    """Log in by email and password (POST /v1/devices/oauth/token, Basic particle:particle), list devices."""
    particle_cloud = ParticleCloud(server.email, server.password, api_prefix=server.url + "/v1")
    yield particle_cloud
    particle_cloud.particle_cloud_api._close_session()


def test_login_and_list_devices(cloud: ParticleCloud) -> None:
    """The devices are keyed by name, each with its functions and variables from GET /v1/devices/:id."""
    assert ["demo"] == list(cloud.devices)
    demo = cloud.devices["demo"]
    assert (True, ["digitalread", "digitalwrite", "analogread", "analogwrite"]) == (
        demo.connected,
        demo.functions,
    )
    assert {"uptime": "int32", "temperature": "double", "greeting": "string", "led": "bool"} == demo.variables


def test_function_call_then_variable(cloud: ParticleCloud) -> None:
    """A function call (form args=) returns Tinker's 1, and a variable read reflects what it did."""
    assert 1 == cloud.demo.digitalwrite("D7", "HIGH")
    assert True is cloud.demo.led
    assert 1 == cloud.demo.digitalwrite("D7", "LOW")
    assert False is cloud.demo.variable("led")
    assert -1 == cloud.demo.digitalwrite("D9", "HIGH")


def test_read_variables(cloud: ParticleCloud) -> None:
    """Variables of each type read back with their Python types."""
    assert 21.5 == cloud.demo.temperature
    assert isinstance(cloud.demo.greeting, str)
    assert isinstance(cloud.demo.uptime, int)


def test_missing_variable_error(cloud: ParticleCloud) -> None:
    """A variable the device lacks raises with the server's status, error and error_description."""
    with pytest.raises(Exception, match="HTTP Status Code: 404") as raised:
        cloud.demo.variable("nope")
    assert "HTTP Status Code: 404.    Error: Variable not found  Error: Variable nope not found" == str(
        raised.value
    )
