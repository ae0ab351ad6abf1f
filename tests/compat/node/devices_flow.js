// Drives particle-api-js through the device calls devicecloud must support and prints one JSON object with
// what each call returned, for the Python test to check. One phase per run, so the test can act on a
// virtual device between phases:
//   node devices_flow.js URL USER PASSWORD reads                       the demo device: list, get, variables, calls
//   node devices_flow.js URL USER PASSWORD provision ID PUBKEY_FILE    sendPublicKey, claimDevice, getClaimCode
//   node devices_flow.js URL USER PASSWORD signal ID on|off            signalDevice
//   node devices_flow.js URL USER PASSWORD rename ID NAME              renameDevice, then getDevice
//   node devices_flow.js URL USER PASSWORD remove ID                   removeDevice, then listDevices and getDevice
'use strict';
const fs = require('fs');
const { runPhases, settle } = require('./flow');

const phases = {
	async reads(particle, auth) {
		const out = {};
		out.listDevices = await settle(particle.listDevices({ auth }));
		out.getDevice = await settle(particle.getDevice({ deviceId: 'demo', auth }));
		const deviceId = out.getDevice.body.id;
		out.getDeviceById = await settle(particle.getDevice({ deviceId, auth }));
		out.getVariable = await settle(particle.getVariable({ deviceId, name: 'temperature', auth }));
		out.callFunction = await settle(
			particle.callFunction({ deviceId: 'demo', name: 'digitalwrite', argument: 'D7,HIGH', auth }));
		out.ledAfterCall = await settle(particle.getVariable({ deviceId: 'demo', name: 'led', auth }));
		out.callMissing = await settle(particle.callFunction({ deviceId, name: 'nope', argument: '', auth }));
		out.getMissingVariable = await settle(particle.getVariable({ deviceId, name: 'nope', auth }));
		return out;
	},
	async provision(particle, auth, deviceId, keyFile) {
		const out = {};
		const key = fs.readFileSync(keyFile, 'utf8');
		out.sendPublicKey = await settle(particle.sendPublicKey({ deviceId, key, auth }));
		out.claimDevice = await settle(particle.claimDevice({ deviceId, auth }));
		out.getClaimCode = await settle(particle.getClaimCode({ auth }));
		return out;
	},
	async signal(particle, auth, deviceId, onOff) {
		return { signalDevice: await settle(particle.signalDevice({ deviceId, signal: onOff === 'on', auth })) };
	},
	async rename(particle, auth, deviceId, name) {
		const out = {};
		out.renameDevice = await settle(particle.renameDevice({ deviceId, name, auth }));
		out.getDevice = await settle(particle.getDevice({ deviceId: name, auth }));
		return out;
	},
	async remove(particle, auth, deviceId) {
		const out = {};
		out.removeDevice = await settle(particle.removeDevice({ deviceId, auth }));
		out.listDevices = await settle(particle.listDevices({ auth }));
		out.getDevice = await settle(particle.getDevice({ deviceId, auth }));
		return out;
	},
};

runPhases(phases);
