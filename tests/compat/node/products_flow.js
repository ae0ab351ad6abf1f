// Drives particle-api-js's product calls (listProducts, getProduct, listTeamMembers, inviteTeamMember,
// removeTeamMember) as the product's owner and as a stranger, and prints what each returned.
'use strict';
const { settle, runPhases } = require('./flow');

runPhases({
	async owner(particle, auth, product, productId, member) {
		const out = {};
		out.listProducts = await settle(particle.listProducts({ auth }));
		out.getBySlug = await settle(particle.getProduct({ product, auth }));
		out.getById = await settle(particle.getProduct({ product: productId, auth }));
		out.teamBefore = await settle(particle.listTeamMembers({ product, auth }));
		out.invite = await settle(particle.inviteTeamMember({ username: member, product, auth }));
		out.inviteAgain = await settle(particle.inviteTeamMember({ username: member, product, auth }));
		out.inviteUnknown = await settle(particle.inviteTeamMember({ username: 'nobody@example.com', product, auth }));
		out.teamAfterInvite = await settle(particle.listTeamMembers({ product: productId, auth }));
		out.remove = await settle(particle.removeTeamMember({ username: member, product, auth }));
		out.teamAfterRemove = await settle(particle.listTeamMembers({ product, auth }));
		out.missing = await settle(particle.getProduct({ product: 'no-such-product', auth }));
		return out;
	},
	async stranger(particle, auth, product) {
		return {
			listProducts: await settle(particle.listProducts({ auth })),
			getProduct: await settle(particle.getProduct({ product, auth })),
			listTeamMembers: await settle(particle.listTeamMembers({ product, auth })),
			inviteTeamMember: await settle(particle.inviteTeamMember({ username: 'x@example.com', product, auth })),
		};
	},
});
