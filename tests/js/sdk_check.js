// Drives the official Genesys Cloud JavaScript SDK (purecloud-platform-client-v2) against the
// proxy, as a Node app of the old three-service design would use it. tests/test_js_sdk.py runs
// it with one JSON argument and reads one JSON object from stdout.
//
//   node sdk_check.js '{"port": 8080, "tenant": "acme", "unknownTenant": "nobody"}'
//
// Tokens are never printed: only their SHA-256, which the test compares with the simulator's.
'use strict';

const crypto = require('crypto');
const platformClient = require('purecloud-platform-client-v2');

const sha256 = (text) => crypto.createHash('sha256').update(text).digest('hex');

// What an SDK error carries. The login rejects with axios' error; API calls reject with the
// answer's body, or, once setReturnExtendedResponses(true), with {status, headers, body}.
function failure(error) {
  const response = error.response || error;
  const headers = response.headers || {};
  return {
    status: response.status || null,
    body: response.data || response.body || (error.response ? null : error),
    proxyError: headers['x-proxy-error'] || null,
  };
}

async function main() {
  const options = JSON.parse(process.argv[2]);
  const client = platformClient.ApiClient.instance;
  client.setGateway({ host: '127.0.0.1', protocol: 'http', port: options.port });
  const result = {};

  // The login goes to the proxy's POST /oauth/token; the Basic username names the tenant and
  // the password is ignored.
  const auth = await client.loginClientCredentialsGrant(options.tenant, 'unused');
  result.tokenSha256 = sha256(auth.accessToken);
  result.expiresInSeconds = Math.round((auth.tokenExpiryTime - Date.now()) / 1000);

  // API calls name the tenant with a default header; the proxy injects the tenant's token.
  client.setDefaultHeaders({ 'X-Tenant-ID': options.tenant });
  const users = new platformClient.UsersApi();
  result.organization = (await new platformClient.OrganizationApi().getOrganizationsMe()).name;
  result.users = (await users.getUsers({ pageSize: 25 })).entities.map((user) => user.name);
  const created = await users.postUsers({ name: 'Grace Hopper', email: 'grace@js.example.com' });
  const changed = await users.patchUser(created.id, { version: created.version, title: 'Admiral' });
  await users.deleteUser(created.id);
  result.written = { created: created.name, title: changed.title, version: changed.version };
  try {
    await users.getUser(created.id);
    result.afterDelete = { status: 200 };
  } catch (error) {
    result.afterDelete = failure(error);
  }

  // An unknown tenant: the proxy's own error reaches the app, on the login and on API calls.
  try {
    await client.loginClientCredentialsGrant(options.unknownTenant, 'unused');
    result.unknownLogin = { status: 200 };
  } catch (error) {
    result.unknownLogin = failure(error);
  }
  client.setDefaultHeaders({ 'X-Tenant-ID': options.unknownTenant });
  client.setReturnExtendedResponses(true); // so the error keeps its status and headers
  try {
    await new platformClient.OrganizationApi().getOrganizationsMe();
    result.unknownApi = { status: 200 };
  } catch (error) {
    result.unknownApi = failure(error);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((error) => {
  process.stderr.write(`sdk_check failed: ${JSON.stringify(failure(error))} ${error.message || ''}\n`);
  process.exit(1);
});
