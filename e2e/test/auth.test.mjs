// R32 over websockets: connection_init authenticates (graphql-transport-ws
// with the npm graphql-ws client, and the legacy graphql-ws subprotocol by
// hand); without a valid credential the server closes with 4401.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { PANEL, describeError, inbound, liveClient, setupDesk } from '../lib/client.mjs';
import { RawSocket } from '../lib/raw.mjs';
import { startServer } from '../lib/server.mjs';

let server;
let desk;
const clients = [];
const sockets = [];

before(async () => {
  server = await startServer();
  desk = await setupDesk(server);
});
after(async () => {
  await Promise.allSettled(clients.map((c) => c.dispose()));
  for (const s of sockets) s.terminate();
  if (server) {
    const log = server.logs(); // what the tests caused, before the stop
    await server.stop();
    assert.doesNotMatch(log, /level=ERROR/, `the server logged an error:\n${log}`);
  }
});

async function refusedWith(connectionParams) {
  const c = liveClient(server, null, { connectionParams });
  clients.push(c);
  const sub = c.subscribe(PANEL, {});
  const failure = await sub.waitEnd('the refusal');
  assert.equal(sub.events.length, 0, sub.summary());
  return failure;
}

test('R32: connection_init without credentials is closed with 4401', async () => {
  const failure = await refusedWith({});
  assert.equal(failure?.code, 4401, `closed with ${describeError(failure)}`);
});

test('R32: connection_init with a wrong token is closed with 4401', async () => {
  for (const params of [
    { Authorization: 'Bearer pls_not-a-token' },
    { Authorization: `Bearer ${desk.op.token}x` },
    { Authorization: 'Bearer plk_not-a-key' },
  ]) {
    const failure = await refusedWith(params);
    assert.equal(failure?.code, 4401, `${JSON.stringify(params)}: closed with ${describeError(failure)}`);
  }
});

test('R32: connection_init without a payload, on a bare socket, is closed with 4401', async () => {
  const raw = await RawSocket.open(server.wsUrl, 'graphql-transport-ws');
  sockets.push(raw);
  raw.send({ type: 'connection_init' });
  const close = await raw.waitClose();
  assert.equal(close.code, 4401, JSON.stringify(close));
  assert.ok(!raw.messages.some((m) => m.type === 'connection_ack'), JSON.stringify(raw.messages));
});

test('an API key authenticates a websocket too (the panel stays for operators: FORBIDDEN)', async () => {
  const c = liveClient(server, desk.key);
  clients.push(c);
  const sub = c.subscribe(PANEL, {});
  const failure = await sub.waitEnd('the refusal of panel to an API key');
  const codes = (Array.isArray(failure) ? failure : sub.errors.flat()).map((e) => e.extensions?.code);
  assert.ok(codes.includes('FORBIDDEN'), `ended with ${describeError(failure)} ${JSON.stringify(sub.errors)}`);
});

test('the legacy graphql-ws subprotocol serves a subscription: connection_init, start, data, stop', async () => {
  const raw = await RawSocket.open(server.wsUrl, 'graphql-ws');
  sockets.push(raw);
  raw.send({ type: 'connection_init', payload: { Authorization: `Bearer ${desk.op.token}` } });
  await raw.waitMessage((m) => m.type === 'connection_ack', 'connection_ack');
  // after: 0 replays the history first, so the trigger cannot race the start.
  raw.send({ id: '1', type: 'start', payload: { query: PANEL, variables: { after: '0' } } });
  const chat = await inbound(desk, 'legacy-customer', 'hello over the legacy protocol');
  const offer = await raw.waitMessage((m) => m.type === 'data' && m.payload?.data?.panel?.chatId === chat.chatId,
    'data with the offer');
  assert.equal(offer.id, '1');
  assert.equal(offer.payload.data.panel.type, 'CHAT_OFFERED');
  assert.equal(offer.payload.data.panel.notify, true);
  assert.equal(offer.payload.errors, undefined);
  const data = raw.messages.filter((m) => m.type === 'data').map((m) => BigInt(m.payload.data.panel.id));
  assert.ok(data.every((v, i) => i === 0 || v > data[i - 1]), `ids out of order: ${data}`);
  raw.send({ id: '1', type: 'stop' });
  await raw.waitMessage((m) => m.type === 'complete' && m.id === '1', 'complete after stop');
  raw.send({ type: 'connection_terminate' });
  const close = await raw.waitClose();
  assert.equal(close.code, 1000, JSON.stringify(close));
  const types = new Set(raw.messages.map((m) => m.type));
  for (const t of types) assert.ok(['connection_ack', 'ka', 'data', 'complete'].includes(t), `unexpected message type ${t}`);
});

test('the legacy graphql-ws subprotocol refuses connection_init without credentials: connection_error, 4401', async () => {
  const raw = await RawSocket.open(server.wsUrl, 'graphql-ws');
  sockets.push(raw);
  raw.send({ type: 'connection_init', payload: {} });
  const close = await raw.waitClose();
  assert.equal(close.code, 4401, JSON.stringify(close));
  assert.ok(raw.messages.some((m) => m.type === 'connection_error'), JSON.stringify(raw.messages));
  assert.ok(!raw.messages.some((m) => m.type === 'connection_ack'), JSON.stringify(raw.messages));
});

test('the upgrade request may carry the Authorization header instead of connection_init', async () => {
  const raw = await RawSocket.open(server.wsUrl, 'graphql-transport-ws', { Authorization: `Bearer ${desk.op.token}` });
  sockets.push(raw);
  raw.send({ type: 'connection_init', payload: {} });
  await raw.waitMessage((m) => m.type === 'connection_ack', 'connection_ack');
  // The operator's history (their status change) proves who is subscribed.
  raw.send({ id: 'h', type: 'subscribe', payload: { query: PANEL, variables: { after: '0' } } });
  const next = await raw.waitMessage((m) => m.type === 'next' && m.id === 'h', 'an event of the panel');
  assert.equal(next.payload.errors, undefined, JSON.stringify(next));
  assert.ok(next.payload.data.panel.id, JSON.stringify(next));
  raw.ws.close(1000);
  await raw.waitClose();
});
