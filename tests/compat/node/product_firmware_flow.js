// Drives particle-api-js's product firmware calls (uploadProductFirmware, listProductFirmware,
// getProductFirmware, updateProductFirmware, downloadProductFirmware, releaseProductFirmware) and the lock
// calls (lockDeviceProductFirmware, unlockDeviceProductFirmware, markAsDevelopmentDevice), and prints what
// each returned:
//   node product_firmware_flow.js URL USER PASSWORD owner PRODUCT BINARY_PATH VERSION DEVICE
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const { runPhases, settle } = require('./flow');

runPhases({
	async owner(particle, auth, product, binaryPath, version, deviceId) {
		const out = {};
		const file = fs.readFileSync(binaryPath);
		out.upload = await settle(particle.uploadProductFirmware({
			file, version: Number(version), title: 'From api-js', description: 'uploaded by the flow', product, auth,
		}));
		out.list = await settle(particle.listProductFirmware({ product, auth }));
		out.get = await settle(particle.getProductFirmware({ version, product, auth }));
		out.update = await settle(particle.updateProductFirmware({
			version, title: 'Renamed', description: 'edited', product, auth,
		}));
		const downloaded = await particle.downloadProductFirmware({ version, product, auth });
		out.download = {
			size: downloaded.length,
			sha256: crypto.createHash('sha256').update(Buffer.from(downloaded)).digest('hex'),
		};
		out.release = await settle(particle.releaseProductFirmware({
			version: Number(version), product, product_default: true, intelligent: false, auth,
		}));
		out.lock = await settle(particle.lockDeviceProductFirmware({
			deviceId, desiredFirmwareVersion: Number(version), flash: true, product, auth,
		}));
		out.unlock = await settle(particle.unlockDeviceProductFirmware({ deviceId, product, auth }));
		out.development = await settle(particle.markAsDevelopmentDevice({ deviceId, product, auth }));
		out.missing = await settle(particle.getProductFirmware({ version: 999, product, auth }));
		return out;
	},
});
