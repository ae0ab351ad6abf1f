// Drives particle-api-js's event calls against devicecloud and prints JSON for the Python test to check.
//   node events_flow.js URL USER PASSWORD publish NAME DATA private|public
//       publishEvent; prints {ok, statusCode, body | message}
//   node events_flow.js URL USER PASSWORD stream DEVICE NAME COUNT HOLD_MS
//       getEventStream (DEVICE: "mine", a device id, or "-" for /v1/events); holds the stream idle for HOLD_MS,
//       then prints the line READY (the test publishes now) and, once COUNT events arrived, one JSON line:
//       {events, disconnects, reconnects} — how often the stream dropped and was reopened by the library
//   node events_flow.js URL USER PASSWORD streamError DEVICE NAME
//       getEventStream expected to fail; prints {statusCode, errorDescription, body}
'use strict';
const Particle = require('particle-api-js');
const { settle } = require('./flow');

function sleep(ms) {
	return new Promise((resolve) => setTimeout(resolve, ms));
}

function streamOptions(device, name, auth) {
	return { deviceId: device === '-' ? undefined : device, name: name || undefined, auth };
}

const phases = {
	async publish(particle, auth, name, data, visibility) {
		const reply = await settle(particle.publishEvent({ name, data, isPrivate: visibility === 'private', auth }));
		process.stdout.write(JSON.stringify(reply) + '\n');
	},
	async stream(particle, auth, device, name, count, holdMs) {
		const stream = await particle.getEventStream(streamOptions(device, name, auth));
		const result = { events: [], disconnects: 0, reconnects: 0 };
		stream.on('disconnect', () => { result.disconnects += 1; });
		stream.on('reconnect', () => { result.reconnects += 1; });
		await sleep(Number(holdMs));
		await new Promise((resolve) => {
			stream.on('event', (event) => {
				result.events.push(event);
				if (result.events.length >= Number(count)) {
					resolve();
				}
			});
			process.stdout.write('READY\n');
		});
		stream.abort();
		process.stdout.write(JSON.stringify(result) + '\n');
	},
	async streamError(particle, auth, device, name) {
		try {
			const stream = await particle.getEventStream(streamOptions(device, name, auth));
			stream.abort();
			process.stdout.write(JSON.stringify({ unexpected: 'the stream opened' }) + '\n');
		} catch (error) {
			const { statusCode, errorDescription, body } = error;
			process.stdout.write(JSON.stringify({ statusCode, errorDescription, body }) + '\n');
		}
	},
};

async function main() {
	const [baseUrl, username, password, phase, ...args] = process.argv.slice(2);
	const particle = new Particle({ baseUrl });
	const login = await particle.login({ username, password });
	await phases[phase](particle, login.body.access_token, ...args);
	// The library's idle timer may still be armed after abort(): leave now that the answer is out.
	process.exit(0);
}

main().catch((error) => {
	process.stderr.write(String(error && error.stack ? error.stack : error));
	process.exit(1);
});
