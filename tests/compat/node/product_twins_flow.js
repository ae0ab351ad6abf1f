// Drives particle-api-js's product twins of events, webhooks, integrations and OAuth clients against
// devicecloud and prints what each call returned (issue 11 section 4).
//   node product_twins_flow.js URL USER PASSWORD calls PRODUCT HOOK_URL
//       publishEvent, createWebhook/listWebhooks/deleteWebhook, createIntegration/listIntegrations/
//       deleteIntegration, createOAuthClient/listOAuthClients/updateOAuthClient/deleteOAuthClient with product
//   node product_twins_flow.js URL USER PASSWORD stream PRODUCT NAME COUNT
//       getEventStream with product; prints READY, then, once COUNT events arrived, {events}
'use strict';
const { settle, runPhases } = require('./flow');

function waitFor(stream, count) {
	return new Promise((resolve) => {
		const events = [];
		stream.on('event', (event) => {
			events.push(event);
			if (events.length >= count) {
				resolve(events);
			}
		});
	});
}

runPhases({
	async calls(particle, auth, product, hookUrl) {
		const out = {};
		out.publish = await settle(particle.publishEvent({ name: 'js/product', data: 'hi', isPrivate: true, product, auth }));
		out.createWebhook = await settle(particle.createWebhook({ event: 'js/hook', url: hookUrl, product, auth }));
		out.listWebhooks = await settle(particle.listWebhooks({ product, auth }));
		const hookId = out.createWebhook.body && out.createWebhook.body.id;
		out.deleteWebhook = await settle(particle.deleteWebhook({ hookId, product, auth }));
		out.createIntegration = await settle(particle.createIntegration({
			event: 'js/int', settings: { url: hookUrl, integration_type: 'Webhook' }, product, auth,
		}));
		out.listIntegrations = await settle(particle.listIntegrations({ product, auth }));
		const integrationId = out.createIntegration.body && out.createIntegration.body.id;
		out.deleteIntegration = await settle(particle.deleteIntegration({ integrationId, product, auth }));
		out.createClient = await settle(particle.createOAuthClient({ name: 'JS server', type: 'installed', product, auth }));
		const clientId = out.createClient.body && out.createClient.body.client.id;
		out.updateClient = await settle(particle.updateOAuthClient({ clientId, name: 'JS renamed', product, auth }));
		out.listClients = await settle(particle.listOAuthClients({ product, auth }));
		out.deleteClient = await settle(particle.deleteOAuthClient({ clientId, product, auth }));
		out.listClientsAfter = await settle(particle.listOAuthClients({ product, auth }));
		return out;
	},
	async stream(particle, auth, product, name, count) {
		const stream = await particle.getEventStream({ product, name, auth });
		const arrived = waitFor(stream, Number(count));
		process.stdout.write('READY\n');
		const events = await arrived;
		stream.abort();
		process.stdout.write(JSON.stringify({ events }) + '\n');
		process.exit(0); // the library's idle timer may still be armed after abort()
	},
});
