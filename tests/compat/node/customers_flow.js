// Drives particle-api-js the way a product's mobile app does (issue 11 section 6): createCustomer with the
// product client's id and secret, then, with the customer's token, getClaimCode with the product; later
// listDevices, getDevice, callFunction and getVariable on its device and on another. Prints what each gave:
//   node customers_flow.js URL USER PASSWORD create PRODUCT CLIENT_ID CLIENT_SECRET EMAIL
//   node customers_flow.js URL USER PASSWORD use TOKEN MINE OTHER
//   node customers_flow.js URL USER PASSWORD stream TOKEN DEVICES NAME
//       getEventStream with the customer's token, one stream per entry of DEVICES (comma list: "mine" or a
//       device id); prints READY once all are open, then, once each got its first event, the events as JSON
'use strict';
const Particle = require('particle-api-js');
const { runPhases, settle } = require('./flow');

runPhases({
	async create(particle, _auth, product, clientId, clientSecret, email) {
		const app = new Particle({ baseUrl: particle.baseUrl, clientId, clientSecret });
		const out = {};
		out.createCustomer = await settle(app.createCustomer({ email, password: 'customer passphrase', product }));
		out.createAgain = await settle(app.createCustomer({ email, password: 'customer passphrase', product }));
		const auth = out.createCustomer.body && out.createCustomer.body.access_token;
		out.getClaimCode = await settle(app.getClaimCode({ product, auth }));
		return out;
	},
	async use(particle, _auth, auth, mine, other) {
		const out = {};
		out.listDevices = await settle(particle.listDevices({ auth }));
		out.getMine = await settle(particle.getDevice({ deviceId: mine, auth }));
		out.callMine = await settle(particle.callFunction({ deviceId: mine, name: 'digitalread', argument: 'D7', auth }));
		out.readMine = await settle(particle.getVariable({ deviceId: mine, name: 'temperature', auth }));
		out.getOther = await settle(particle.getDevice({ deviceId: other, auth }));
		out.callOther = await settle(particle.callFunction({ deviceId: other, name: 'digitalread', argument: 'D7', auth }));
		return out;
	},
	async stream(particle, _auth, auth, devices, name) {
		const streams = await Promise.all(
			devices.split(',').map((deviceId) => particle.getEventStream({ deviceId, name, auth })),
		);
		const firsts = streams.map((stream) => new Promise((resolve) => stream.once('event', resolve)));
		process.stdout.write('READY\n');
		const events = await Promise.all(firsts);
		streams.forEach((stream) => stream.abort());
		process.stdout.write(JSON.stringify({ events }) + '\n');
		// The library's idle timer may still be armed after abort(): leave now that the answer is out.
		process.exit(0);
	},
});
