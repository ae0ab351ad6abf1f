// What the *_flow.js drivers share: settle() turns a particle-api-js call into a plain result, and
// runPhases() runs "node X_flow.js URL USER PASSWORD PHASE ARGS…": log in, run one phase, print its JSON.
'use strict';
const Particle = require('particle-api-js');

async function settle(promise) {
	try {
		const response = await promise;
		return { ok: true, statusCode: response.statusCode, body: response.body };
	} catch (error) {
		return { ok: false, statusCode: error.statusCode, body: error.body, message: error.shortErrorDescription };
	}
}

function runPhases(phases) {
	async function main() {
		const [baseUrl, username, password, phase, ...args] = process.argv.slice(2);
		const particle = new Particle({ baseUrl });
		const login = await particle.login({ username, password });
		const out = await phases[phase](particle, login.body.access_token, ...args);
		process.stdout.write(JSON.stringify(out));
	}
	main().catch((error) => {
		process.stderr.write(String(error && error.stack ? error.stack : error));
		process.exit(1);
	});
}

module.exports = { settle, runPhases };
