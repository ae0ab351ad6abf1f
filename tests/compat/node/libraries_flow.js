// Drives particle-api-js's library calls against devicecloud and prints one JSON object with what each call
// returned, for the Python test to check:
//   node libraries_flow.js URL USER PASSWORD publish ARCHIVE NAME
//       contributeLibrary (the archive file), contributeLibrary again (same version: refused), getLibrary,
//       publishLibrary, getLibraryVersions, listLibraries (filter, scope, sort, limit, architectures),
//       downloadFile of links.download (base64), then the Client wrapper's libraries() and library()
//   node libraries_flow.js URL USER PASSWORD other NAME
//       as another account: getLibrary, listLibraries, deleteLibrary (refused), downloadFile (base64)
//   node libraries_flow.js URL USER PASSWORD remove ARCHIVE NAME
//       contributeLibrary, deleteLibrary, getLibrary after the delete
'use strict';
const { runPhases, settle } = require('./flow');

async function download(particle, link) {
	try {
		const buffer = await particle.downloadFile({ uri: link });
		return { ok: true, base64: Buffer.from(buffer).toString('base64') };
	} catch (error) {
		return { ok: false, statusCode: error.statusCode };
	}
}

const phases = {
	async publish(particle, auth, archive, name) {
		const out = {};
		out.contribute = await settle(particle.contributeLibrary({ archive, auth }));
		out.contributeAgain = await settle(particle.contributeLibrary({ archive, auth }));
		out.getLibrary = await settle(particle.getLibrary({ name, auth }));
		out.publish = await settle(particle.publishLibrary({ name, auth }));
		out.versions = await settle(particle.getLibraryVersions({ name, page: 1, limit: 10, auth }));
		out.list = await settle(particle.listLibraries({
			filter: name.slice(0, 4), scope: 'public', sort: 'name', page: 1, limit: 5, architectures: ['photon', 'argon'], auth,
		}));
		out.listMine = await settle(particle.listLibraries({ scope: 'mine', excludeScopes: ['private'], auth }));
		out.download = await download(particle, out.publish.body.data.links.download);
		const client = particle.client({ auth });
		const libraries = await client.libraries({ filter: name });
		out.clientLibraries = libraries.map((lib) => ({ name: lib.name, version: lib.version, downloadUrl: lib.downloadUrl }));
		const library = await client.library(name, { version: out.publish.body.data.attributes.version });
		out.clientLibrary = { name: library.name, visibility: library.visibility, downloadUrl: library.downloadUrl };
		try {
			await client.contributeLibrary(archive);
			out.clientContributeAgain = { ok: true };
		} catch (error) {
			out.clientContributeAgain = { ok: false, message: error.message };
		}
		return out;
	},
	async other(particle, auth, name) {
		const out = {};
		out.getLibrary = await settle(particle.getLibrary({ name, auth }));
		out.list = await settle(particle.listLibraries({ filter: name, auth }));
		out.deleteLibrary = await settle(particle.deleteLibrary({ name, auth }));
		out.download = await download(particle, out.getLibrary.body.data.links.download);
		return out;
	},
	async remove(particle, auth, archive, name) {
		const out = {};
		out.contribute = await settle(particle.contributeLibrary({ archive, auth }));
		out.deleteLibrary = await settle(particle.deleteLibrary({ name, auth }));
		out.getAfterDelete = await settle(particle.getLibrary({ name, auth }));
		out.downloadAfterDelete = await download(particle, out.contribute.body.data.links.download);
		return out;
	},
};

runPhases(phases);
