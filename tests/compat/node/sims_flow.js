// Drives particle-api-js's SIM calls (listSIMs, getSIMDataUsage, getFleetDataUsage, checkSIM, removeSIM) for a
// product's SIMs, for the account's own SIM, and as a stranger, and prints what each returned.
'use strict';
const { settle, runPhases } = require('./flow');

runPhases({
	async product(particle, auth, product, iccid, other) {
		return {
			list: await settle(particle.listSIMs({ product, auth })),
			page: await settle(particle.listSIMs({ product, page: 2, perPage: 1, auth })),
			filtered: await settle(particle.listSIMs({ product, iccid: other.slice(-6), auth })),
			usage: await settle(particle.getSIMDataUsage({ iccid, product, auth })),
			fleet: await settle(particle.getFleetDataUsage({ product, auth })),
			remove: await settle(particle.removeSIM({ iccid: other, product, auth })),
			after: await settle(particle.listSIMs({ product, auth })),
		};
	},
	async user(particle, auth, iccid) {
		return {
			list: await settle(particle.listSIMs({ auth })),
			check: await settle(particle.checkSIM({ iccid, auth })),
			usage: await settle(particle.getSIMDataUsage({ iccid, auth })),
			remove: await settle(particle.removeSIM({ iccid, auth })),
			checkAfter: await settle(particle.checkSIM({ iccid, auth })),
		};
	},
	async stranger(particle, auth, product, iccid) {
		return {
			check: await settle(particle.checkSIM({ iccid, auth })),
			remove: await settle(particle.removeSIM({ iccid, auth })),
			list: await settle(particle.listSIMs({ product, auth })),
		};
	},
});
