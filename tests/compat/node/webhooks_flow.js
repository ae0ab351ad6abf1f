// Drives particle-api-js's webhook and integration calls against devicecloud and prints one JSON object with
// what each call returned, for the Python test to check (it reads the resulting state over HTTP itself):
//   node webhooks_flow.js URL USER PASSWORD webhooks TARGET DEVICE_ID
//       createWebhook (plain, and with every option), listWebhooks, deleteWebhook, listWebhooks again,
//       deleteWebhook of the deleted hook, createWebhook with a bad url
//   node webhooks_flow.js URL USER PASSWORD integrations TARGET DEVICE_ID
//       createIntegration (Webhook), listIntegrations, GET /v1/integrations/:id, editIntegration,
//       deleteIntegration, GET after the delete, createIntegration of an unsupported type
// particle-api-js 12.0.3 has no getIntegration: the "get" steps use its generic particle.get({uri}), the
// request every other call is built on.
'use strict';
const { runPhases, settle } = require('./flow');

const phases = {
	async webhooks(particle, auth, target, deviceId) {
		const out = {};
		out.createPlain = await settle(particle.createWebhook({ event: 'js/plain', url: `${target}/plain`, auth }));
		out.createFull = await settle(particle.createWebhook({
			event: 'js/full',
			url: `${target}/full?device={{PARTICLE_DEVICE_ID}}`,
			device: deviceId,
			rejectUnauthorized: false,
			noDefaults: true,
			hook: {
				method: 'PUT',
				auth: { username: 'hook-user', password: 'hook-pass' },
				headers: { 'X-Api-Key': 'k-123' },
				query: { source: 'api-js' },
				json: { value: '{{{PARTICLE_EVENT_VALUE}}}', temp: '{{temp}}' },
				responseTemplate: '{{answer}}',
				responseEvent: 'js/full-answer',
				errorResponseEvent: 'js/full-error',
			},
			auth,
		}));
		out.listWebhooks = await settle(particle.listWebhooks({ auth }));
		out.deleteWebhook = await settle(particle.deleteWebhook({ hookId: out.createPlain.body.id, auth }));
		out.listAfterDelete = await settle(particle.listWebhooks({ auth }));
		out.deleteMissing = await settle(particle.deleteWebhook({ hookId: out.createPlain.body.id, auth }));
		out.createInvalid = await settle(particle.createWebhook({ event: 'js/bad', url: 'not a url', auth }));
		return out;
	},
	async integrations(particle, auth, target, deviceId) {
		const out = {};
		out.createIntegration = await settle(particle.createIntegration({
			event: 'js/int',
			deviceId,
			settings: {
				integration_type: 'Webhook',
				url: `${target}/int`,
				requestType: 'POST',
				form: { reading: '{{{PARTICLE_EVENT_VALUE}}}' },
				headers: { 'X-Source': 'integration' },
				responseTopic: 'js/int-answer',
			},
			auth,
		}));
		const integrationId = out.createIntegration.body.id;
		out.listIntegrations = await settle(particle.listIntegrations({ auth }));
		out.getIntegration = await settle(particle.get({ uri: `/v1/integrations/${integrationId}`, auth }));
		out.editIntegration = await settle(particle.editIntegration({
			integrationId,
			event: 'js/int-edited',
			settings: { integration_type: 'Webhook', url: `${target}/edited`, requestType: 'GET' },
			auth,
		}));
		out.getAfterEdit = await settle(particle.get({ uri: `/v1/integrations/${integrationId}`, auth }));
		out.deleteIntegration = await settle(particle.deleteIntegration({ integrationId, auth }));
		out.getAfterDelete = await settle(particle.get({ uri: `/v1/integrations/${integrationId}`, auth }));
		out.listAfterDelete = await settle(particle.listIntegrations({ auth }));
		out.createUnsupported = await settle(particle.createIntegration({
			event: 'js/azure',
			settings: { integration_type: 'AzureIotHub', hub_name: 'hub', policy_name: 'p', policy_key: 'k' },
			auth,
		}));
		return out;
	},
};

runPhases(phases);
