// Drives particle-api-js through the account and token calls devicecloud must support, and prints
// one JSON object with what each call returned, for the Python test to check.
'use strict';
const Particle = require('particle-api-js');
const { settle } = require('./flow');

async function main() {
	const [baseUrl, username, password, newUser] = process.argv.slice(2);
	const particle = new Particle({ baseUrl });
	const out = {};
	out.badLogin = await settle(particle.login({ username, password: 'wrong password' }));
	out.login = await settle(particle.login({ username, password }));
	const token = out.login.body.access_token;
	out.getUserInfo = await settle(particle.getUserInfo({ auth: token }));
	out.createUser = await settle(particle.createUser({ username: newUser, password: 'new user password' }));
	const second = await settle(particle.login({ username: newUser, password: 'new user password' }));
	out.secondToken = second.body.access_token;
	out.deleteAccessToken = await settle(particle.deleteAccessToken({ token: out.secondToken }));
	out.afterDelete = await settle(particle.getUserInfo({ auth: out.secondToken }));
	out.deleteCurrentAccessToken = await settle(particle.deleteCurrentAccessToken({ auth: token }));
	out.afterDeleteCurrent = await settle(particle.getUserInfo({ auth: token }));
	process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
	process.stderr.write(String(error && error.stack ? error.stack : error));
	process.exit(1);
});
