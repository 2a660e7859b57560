// GraphQL over HTTP conformance: graphql-http's server audit against a real
// server. An audit whose status is 'error' (a MUST of the spec) fails the
// test; warnings (SHOULD) and notices (MAY) are printed, and known ones are
// explained in README.md.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { serverAudits } from 'graphql-http';

import { gqlRaw, login } from '../lib/client.mjs';
import { startServer } from '../lib/server.mjs';

/** A fetch that adds a bearer credential to every request of the audit. */
function fetchWith(token) {
  return (input, init = {}) => {
    const headers = new Headers(init.headers);
    if (token) headers.set('authorization', `Bearer ${token}`);
    return fetch(input, { ...init, headers, signal: AbortSignal.timeout(10_000) });
  };
}

async function runAudits(server, token, label) {
  const results = [];
  for (const audit of serverAudits({ url: server.url, fetchFn: fetchWith(token) })) {
    results.push(await audit.fn());
  }
  const failed = results.filter((r) => r.status !== 'ok');
  for (const r of failed) {
    let body = '';
    try {
      body = `${r.response.status} ${(await r.response.text()).slice(0, 300)}`;
    } catch {
      // the body was read by the audit
      body = `${r.response?.status ?? ''}`;
    }
    console.log(`[${label}] ${r.status.toUpperCase()} ${r.id} ${r.name}: ${r.reason} (answer: ${body})`);
  }
  console.log(`[${label}] ${results.length} audits: ${results.filter((r) => r.status === 'ok').length} ok, ` +
    `${failed.filter((r) => r.status === 'warn').length} warn, ${failed.filter((r) => r.status === 'notice').length} notice, ` +
    `${failed.filter((r) => r.status === 'error').length} error`);
  return results;
}

const errorsOf = (results) => results.filter((r) => r.status === 'error').map((r) => `${r.id} ${r.name}: ${r.reason}`);

// The audit checks the {variables} map with `__type(name: $name)`, an
// introspection field: Parley disables introspection unless
// PARLEY_INTROSPECTION is true (a deliberate choice), so the audited server
// enables it.
describe('graphql-http server audit (introspection enabled)', () => {
  let server;
  let token;
  before(async () => {
    server = await startServer({ env: { PARLEY_INTROSPECTION: 'true' } });
    token = (await login(server, server.admin.email, server.admin.password)).token;
  });
  after(async () => {
    if (server) await server.stop();
  });

  test('unauthenticated (the audit queries only __typename and __type, which are open)', async () => {
    assert.deepEqual(errorsOf(await runAudits(server, null, 'no credential')), []);
  });

  test('R32: authenticated with a bearer token through fetchFn', async () => {
    assert.deepEqual(errorsOf(await runAudits(server, token, 'bearer')), []);
  });

  test('R32: a domain query without credentials is refused with UNAUTHENTICATED, in a 200', async () => {
    const { status, body } = await gqlRaw(server, null, '{ me { operator { id } } }');
    assert.equal(status, 200);
    assert.equal(body.errors?.[0]?.extensions?.code, 'UNAUTHENTICATED', JSON.stringify(body));
  });
});

describe('introspection disabled (the default)', () => {
  let server;
  let token;
  before(async () => {
    server = await startServer();
    token = (await login(server, server.admin.email, server.admin.password)).token;
  });
  after(async () => {
    if (server) await server.stop();
  });

  test('the audit fails only where it needs introspection', async () => {
    const results = await runAudits(server, token, 'introspection off');
    assert.deepEqual(results.filter((r) => r.status === 'error').map((r) => r.id), ['28B9'],
      'only the audit of the {variables} map (it uses __type) may fail without introspection');
  });

  // gqlgen refuses __type with a plain error when introspection is off;
  // Parley answers it with its own stable code.
  test('a disabled __type answers INTROSPECTION_DISABLED, not INTERNAL', async () => {
    const { status, body } = await gqlRaw(server, token, '{ __type(name: "Query") { name } }');
    assert.equal(status, 200);
    assert.ok(body.errors?.length, JSON.stringify(body));
    assert.equal(body.errors[0].extensions?.code, 'INTROSPECTION_DISABLED', JSON.stringify(body));
  });
});
