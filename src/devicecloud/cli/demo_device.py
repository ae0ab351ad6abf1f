"""
The demo virtual device ``serve`` runs beside the gateway, so the very first run has something to call.

It keeps its identity in ``<data dir>/virtual-devices/demo``, registers its key like an operator would,
and belongs to the first account; it runs the Tinker functions and a few demo variables.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from devicecloud.errors import DomainError
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice import VirtualDevice, load_or_create_identity

DEMO_NAME = "demo"
logger = structlog.get_logger("devicecloud.demo")


@dataclass
class DemoDevice:
    device: VirtualDevice
    name: str
    owner: str | None


async def start_demo_device(runtime: Runtime) -> DemoDevice:
    """
    Register, claim (for the first account, the first time) and connect the demo device.
    """
    state_dir = runtime.settings.data_dir / "virtual-devices" / DEMO_NAME
    identity, created = load_or_create_identity(state_dir)
    await runtime.device_keys.add(identity.device_id, identity.public_key_pem())
    users = await runtime.accounts.list_users()
    owner = users[0] if users else None
    name = DEMO_NAME
    if owner is not None:
        try:
            claimed = await runtime.devices.claim(owner, identity.device_id)
            name = claimed.name or DEMO_NAME
            if created and claimed.name != DEMO_NAME:
                name = (await runtime.devices.rename(owner, identity.device_id, DEMO_NAME)).name or DEMO_NAME
        except DomainError as exc:  # someone else owns it now, or the name is taken: leave things as they are
            logger.info("demo device left as it is", reason=exc.description)
    device = VirtualDevice(
        "127.0.0.1",
        runtime.gateway_port,
        device_id=identity.device_id,
        device_key=identity.private_key,
        server_public_key=runtime.server_key.public_key(),
        demo=True,
        reconnect=True,
    )
    await device.start()
    return DemoDevice(device=device, name=name, owner=owner.username if owner else None)
