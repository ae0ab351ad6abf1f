// Drives particle-api-js's flashDevice against devicecloud and prints what it returned, for the Python test:
//   node firmware_flow.js URL USER PASSWORD flash ID FILE     flashDevice with one binary (as particle flash does)
'use strict';
const { runPhases, settle } = require('./flow');

const phases = {
	async flash(particle, auth, deviceId, file) {
		return { flashDevice: await settle(particle.flashDevice({ deviceId, files: { [file]: file }, auth })) };
	},
};

runPhases(phases);
