"""
A Particle device in software, for tests, demos and load: the device role of :mod:`devicecloud.protocol`
over asyncio TCP.

Typical use::

    identity, _ = load_or_create_identity(Path("data/virtual-devices/demo"))
    device = VirtualDevice("127.0.0.1", 5683, device_id=identity.device_id,
                           device_key=identity.private_key, server_public_key=server_pem, demo=True)
    device.variables["temp"] = 21.5                 # a double; bool/int/str infer their own types
    device.add_function("brew", lambda arg: len(arg))
    async with device:
        await device.wait_connected(10)
        await device.publish("status", "ready")
        await device.subscribe("alerts/", handler=lambda name, data: print(name, data))

Layers (each module's docstring has its theory of operation): :mod:`.device` (lifecycle, reconnects,
requests to the cloud) → :mod:`.link` (one socket around a ``protocol.Connection``) and :mod:`.responder`
(answers to the cloud from :mod:`.application`'s registries; :mod:`.demo` is Tinker). :mod:`.identity` keeps
the device id and key in a state directory; :mod:`.provisioning` registers them with a server's HTTP API.
This package imports nothing from devicecloud but :mod:`devicecloud.protocol`.
"""

from devicecloud.protocol import ResponseStyle, SubscriptionScope, VariableType
from devicecloud.virtualdevice.application import CloudFunctions, CloudVariables, infer_variable_type
from devicecloud.virtualdevice.demo import DEMO_FUNCTIONS, DEMO_VARIABLES, Tinker, install_demo
from devicecloud.virtualdevice.device import VIRTUAL_DEVICE_TIMING, VirtualDevice
from devicecloud.virtualdevice.identity import (
    DeviceIdentity,
    EcDeviceIdentity,
    IdentityError,
    generate_ec_identity,
    generate_identity,
    load_ec_identity,
    load_identity,
    load_or_create_ec_identity,
    load_or_create_identity,
    save_identity,
)
from devicecloud.virtualdevice.provisioning import ApiError, CloudApi
from devicecloud.virtualdevice.support import (
    Backoff,
    DeviceStatistics,
    EventHandler,
    NotConnectedError,
    RequestError,
    Subscription,
    VirtualDeviceError,
)

__all__ = [
    "DEMO_FUNCTIONS",
    "DEMO_VARIABLES",
    "VIRTUAL_DEVICE_TIMING",
    "ApiError",
    "Backoff",
    "CloudApi",
    "CloudFunctions",
    "CloudVariables",
    "DeviceIdentity",
    "DeviceStatistics",
    "EcDeviceIdentity",
    "EventHandler",
    "IdentityError",
    "NotConnectedError",
    "RequestError",
    "ResponseStyle",
    "Subscription",
    "SubscriptionScope",
    "Tinker",
    "VariableType",
    "VirtualDevice",
    "VirtualDeviceError",
    "generate_ec_identity",
    "generate_identity",
    "infer_variable_type",
    "install_demo",
    "load_ec_identity",
    "load_identity",
    "load_or_create_ec_identity",
    "load_or_create_identity",
    "save_identity",
]
