// Drives particle-api-js's product device calls (addDeviceToProduct by id and with a file, listDevices with
// a product and filters, getDevice with a product, removeDevice with a product, with and without deny,
// removeDeviceOwner) and prints what each returned:
//   node product_devices_flow.js URL USER PASSWORD owner PRODUCT ID1 ID2 ID3
'use strict';
const { runPhases, settle } = require('./flow');

runPhases({
	async owner(particle, auth, product, first, second, third) {
		const out = {};
		out.addOne = await settle(particle.addDeviceToProduct({ deviceId: first, product, auth }));
		const file = Buffer.from(`${second}\n${third}\nnot-a-device\n${first}\n`, 'utf8');
		out.addFile = await settle(particle.addDeviceToProduct({ product, file, auth }));
		out.listAll = await settle(particle.listDevices({ product, sortAttr: 'deviceId', sortDir: 'asc', auth }));
		out.listPage = await settle(particle.listDevices({ product, sortAttr: 'deviceId', page: 2, perPage: 2, auth }));
		out.listById = await settle(particle.listDevices({ product, deviceId: second.slice(-6), auth }));
		out.listGroups = await settle(particle.listDevices({ product, groups: ['nowhere'], auth }));
		out.getDevice = await settle(particle.getDevice({ deviceId: first, product, auth }));
		out.remove = await settle(particle.removeDevice({ deviceId: first, product, auth }));
		out.deny = await settle(particle.removeDevice({ deviceId: second, product, deny: true, auth }));
		out.getRemoved = await settle(particle.getDevice({ deviceId: first, product, auth }));
		out.getDenied = await settle(particle.getDevice({ deviceId: second, product, auth }));
		out.claim = await settle(particle.claimDevice({ deviceId: third, auth }));
		out.removeOwner = await settle(particle.removeDeviceOwner({ deviceId: third, product, auth }));
		out.getReleased = await settle(particle.getDevice({ deviceId: third, product, auth }));
		return out;
	},
});
