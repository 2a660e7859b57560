// R12, R24, R32 through real clients: an operator's panel subscription over
// graphql-transport-ws (the npm graphql-ws client on ws), against a real
// server process, on SQLite and, when TEST_DATABASE_URL is set, PostgreSQL.
// The scenario: an offer with its notification, accept, a conversation, an
// abrupt network drop while events keep coming, and a resumption with
// `after` that must deliver every missed event exactly once, in order, with
// no duplicate at the seam between the replay and the live continuation.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  PANEL, acceptChat, describeError, gql, gqlRaw, inbound, liveClient, login, sendMessage, setupDesk, waitOffered,
} from '../lib/client.mjs';
import { postgresAvailable, startServer } from '../lib/server.mjs';

const id = (e) => BigInt(e.id);

/** Asserts that events have strictly increasing ids (no duplicate, no reordering). */
function assertIncreasing(events, what) {
  for (let i = 1; i < events.length; i++) {
    assert.ok(id(events[i]) > id(events[i - 1]),
      `${what}: event ${events[i].id} (${events[i].type}) comes after ${events[i - 1].id} (${events[i - 1].type})`);
  }
}

const CHAT = `subscription Chat($id: ID!, $after: ID) { chat(id: $id, after: $after) { id type chatId } }`;

const key = (e) => `${e.id} ${e.type} chat=${e.chatId} message=${e.message?.id ?? '-'} notify=${e.notify}`;

function scenario(database) {
  let server;
  let desk;
  const clients = [];
  const client = (token) => {
    const c = liveClient(server, token);
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await startServer({ database });
    desk = await setupDesk(server, { tag: database });
  });
  after(async () => {
    await Promise.allSettled(clients.map((c) => c.dispose()));
    if (server) await server.stop(); // already stopped unless a step failed
  });

  // State shared by the steps, which run in order.
  let first; // the operator's first connection
  let main; // its panel subscription, started with after: 0
  let alice; // the first customer's chat
  let lastSeen; // the last event the first connection received before the drop
  let lastChatEvent; // the newest event of alice's chat

  test('R12: a panel subscription started with after receives the offer with a notification', async () => {
    first = client(desk.op.token);
    // after: 0 replays the operator's whole history, then goes live: no
    // event can fall between the subscription's start and the trigger.
    main = first.subscribe(PANEL, { after: '0' });
    alice = await inbound(desk, 'alice', 'Hello, my order is late');
    assert.equal(alice.newChat, true);
    const offer = await main.waitFor((e) => e.type === 'CHAT_OFFERED' && e.chatId === alice.chatId, 'CHAT_OFFERED for alice');
    assert.equal(offer.notify, true, `the offer must carry notify: true (the panel plays its sound): ${key(offer)}`);
    assert.equal(offer.operatorId, desk.op.id);
    // The replayed history (the operator's status change) came first, in order.
    assert.ok(main.events.some((e) => e.type === 'OPERATOR_STATUS_CHANGED' && id(e) < id(offer)), main.summary());
    assertIncreasing(main.events, 'panel from after: 0');
  });

  test('R13/R14: accept, then customer and operator exchange messages live', async () => {
    const chat = await acceptChat(desk, alice.chatId);
    assert.equal(chat.status, 'IN_PROGRESS');
    const accepted = await main.waitFor((e) => e.type === 'CHAT_ACCEPTED' && e.chatId === alice.chatId, 'CHAT_ACCEPTED');
    assert.equal(accepted.notify, false);
    const customer = await inbound(desk, 'alice', 'Order 1042');
    assert.equal(customer.chatId, alice.chatId);
    const operator = await sendMessage(desk, alice.chatId, 'Let me check 1042');
    for (const [m, text] of [[customer, 'Order 1042'], [operator, 'Let me check 1042']]) {
      const ev = await main.waitFor((e) => e.message?.id === m.messageId, `MESSAGE_ADDED "${text}"`);
      assert.equal(ev.type, 'MESSAGE_ADDED');
      assert.equal(ev.chatId, alice.chatId);
      assert.equal(ev.message.text, text);
    }
    assertIncreasing(main.events, 'panel');
  });

  test('R12: a subscription started without after receives the events after its start', async () => {
    const live = first.subscribe(PANEL, {});
    // graphql-transport-ws acknowledges no subscription: probe until the
    // first probe message arrives (bounded), then every later event must.
    let started;
    for (let attempt = 1; !started; attempt++) {
      const probe = await inbound(desk, 'alice', `probe ${attempt}`);
      try {
        started = await live.waitFor((e) => e.message?.id === probe.messageId, `probe ${attempt}`, 1_000);
      } catch (err) {
        if (attempt >= 15 || live.failure !== undefined) throw err;
      }
    }
    const probes = live.events.filter((e) => e.type === 'MESSAGE_ADDED');
    assert.ok(probes.length >= 1);
    const more = await sendMessage(desk, alice.chatId, 'Still there?');
    await live.waitFor((e) => e.message?.id === more.messageId, 'the operator message on the live subscription');
    await main.waitFor((e) => e.message?.id === more.messageId, 'the operator message on the main subscription');
    // From its first event on, the live subscription saw what main saw.
    const from = main.events.findIndex((e) => e.id === live.events[0].id);
    assert.ok(from >= 0, `main lacks ${live.events[0].id}`);
    assert.deepEqual(live.events.map(key), main.events.slice(from).map(key));
    lastSeen = main.events.at(-1);
  });

  test('R12: after an abrupt drop, resuming with after delivers every missed event exactly once', async () => {
    // Drop the TCP connection without a closing handshake.
    first.drop();
    const closed = await main.waitEnd('the drop to be noticed');
    assert.equal(closed?.code, 1006, `the client saw ${describeError(closed)}`);

    // Events keep coming while the operator is away: new customers (each
    // offered, then writing again), and the ongoing conversation.
    const produced = { offers: [], messages: [] };
    const customerBurst = async (prefix, n) => {
      await Promise.all(Array.from({ length: n }, async (_, i) => {
        const c = await inbound(desk, `${prefix}-${i}`, `hello from ${prefix}-${i}`);
        assert.equal(c.newChat, true);
        produced.offers.push(c.chatId);
        await waitOffered(desk, c.chatId);
        // A second message in an offered chat reaches the panel too.
        produced.messages.push((await inbound(desk, `${prefix}-${i}`, `anyone? ${prefix}-${i}`)).messageId);
      }));
      produced.messages.push((await sendMessage(desk, alice.chatId, `update for ${prefix}`)).messageId);
      produced.messages.push((await inbound(desk, 'alice', `thanks ${prefix}`)).messageId);
    };
    await customerBurst('away', 6);

    // Resume while more events are being produced, to race the seam
    // between the replay from the log and the live stream.
    const second = client(desk.op.token);
    const resumed = second.subscribe(PANEL, { after: lastSeen.id });
    await customerBurst('seam', 6);

    // A marker produced after everything else: once it arrives, every
    // earlier event has (delivery is in id order).
    const marker = await inbound(desk, 'marker-1', 'marker');
    const isMarker = (e) => e.type === 'CHAT_OFFERED' && e.chatId === marker.chatId;
    await resumed.waitFor(isMarker, 'the marker on the resumed subscription');

    // A fresh subscription from the same point replays the same events.
    const third = client(desk.op.token);
    const fresh = third.subscribe(PANEL, { after: lastSeen.id });
    await fresh.waitFor(isMarker, 'the marker on the fresh subscription');

    const upTo = (events) => events.slice(0, events.findIndex(isMarker) + 1);
    const got = upTo(resumed.events);
    assertIncreasing(got, 'resumed');
    assert.ok(id(got[0]) > id(lastSeen), `the resumption starts at ${got[0].id}, at or before after=${lastSeen.id}`);
    assert.deepEqual(got.map(key), upTo(fresh.events).map(key), 'the resumed and the fresh replay differ');
    // Every event we caused is there exactly once.
    for (const chatId of produced.offers) {
      const offers = got.filter((e) => e.type === 'CHAT_OFFERED' && e.chatId === chatId);
      assert.equal(offers.length, 1, `CHAT_OFFERED for ${chatId} arrived ${offers.length} times`);
      assert.equal(offers[0].notify, true);
    }
    for (const messageId of produced.messages) {
      const n = got.filter((e) => e.type === 'MESSAGE_ADDED' && e.message?.id === messageId).length;
      assert.equal(n, 1, `MESSAGE_ADDED for message ${messageId} arrived ${n} times`);
    }
    // Each new customer: an offer and a second message; alice: two per burst.
    assert.equal(got.filter((e) => e.type !== 'CHAT_OFFERED' || e.chatId !== marker.chatId).length,
      produced.offers.length + produced.messages.length,
      `unexpected events in the resumption: ${got.map(key).join('\n')}`);

    // The live continuation: new events arrive once, on both, in order.
    const after1 = await inbound(desk, 'marker-2', 'marker');
    const reply = await sendMessage(desk, alice.chatId, 'all sorted');
    for (const sub of [resumed, fresh]) {
      await sub.waitFor((e) => e.message?.id === reply.messageId, 'the last live message');
      assertIncreasing(sub.events, 'resumed + live');
      assert.equal(sub.events.filter((e) => e.type === 'CHAT_OFFERED' && e.chatId === after1.chatId).length, 1);
    }
    assert.deepEqual(resumed.events.map(key), fresh.events.map(key));
    assert.equal(resumed.failure, undefined);
    assert.deepEqual(resumed.errors, []);
    lastChatEvent = resumed.events.at(-1).id; // the reply: an event of alice's chat
  });

  test('R24: until completion only the owner (and the integration) reads the chat; then everyone', async () => {
    await gql(server, desk.admin.token, `mutation($in: CreateOperatorInput!) { createOperator(input: $in) { id } }`,
      { in: { email: `bea.${database}@e2e.parley`, name: 'Bea', password: 'operator-password-2' } });
    const bea = await login(server, `bea.${database}@e2e.parley`, 'operator-password-2');
    const q = `query($id: ID!) { node(id: $id) { ... on Chat { status messages(first: 100) { totalCount } } } }`;
    const byOwner = await gql(server, desk.op.token, q, { id: alice.chatId });
    assert.equal(byOwner.node.status, 'IN_PROGRESS');
    const byKey = await gql(server, desk.key, q, { id: alice.chatId });
    assert.equal(byKey.node.messages.totalCount, byOwner.node.messages.totalCount);
    const byOther = await gqlRaw(server, bea.token, q, { id: alice.chatId });
    assert.equal(byOther.body.errors?.[0]?.extensions?.code, 'FORBIDDEN', JSON.stringify(byOther.body));
    // Nor may another operator follow the chat live.
    const beaLive = client(bea.token).subscribe(CHAT, { id: alice.chatId });
    await beaLive.waitEnd('the refusal of the chat subscription');
    assert.ok(beaLive.errors.flat().some((e) => e.extensions?.code === 'FORBIDDEN') ||
      (Array.isArray(beaLive.failure) && beaLive.failure.some((e) => e.extensions?.code === 'FORBIDDEN')),
    `another operator's chat subscription ended with ${describeError(beaLive.failure)} ${JSON.stringify(beaLive.errors)}`);
    assert.equal(beaLive.events.length, 0);

    // The owner follows the chat, from its newest event, and completes it.
    const ownerLive = client(desk.op.token).subscribe(CHAT, { id: alice.chatId, after: lastChatEvent });
    const done = await gql(server, desk.op.token, `mutation($id: ID!) { completeChat(id: $id) { status } }`, { id: alice.chatId });
    assert.equal(done.completeChat.status, 'COMPLETED');
    await ownerLive.waitFor((e) => e.type === 'CHAT_COMPLETED' && e.chatId === alice.chatId, 'CHAT_COMPLETED');
    const completed = await gql(server, bea.token, q, { id: alice.chatId });
    assert.equal(completed.node.messages.totalCount, byOwner.node.messages.totalCount);
  });

  test('the server logged no error, and stops gracefully on SIGTERM (exit status 0)', async () => {
    assert.doesNotMatch(server.logs(), /level=ERROR/, `the server logged an error:\n${server.logs()}`);
    const exit = await server.stop();
    assert.equal(exit.code, 0, `the server exited with ${JSON.stringify(exit)}:\n${server.logs()}`);
  });

  // SIGTERM may cancel a job in flight (here the RELEASE job that
  // completeChat enqueues): its lease expires and another run retries it,
  // with nothing logged as an error.
  test('the graceful stop logs no error', () => {
    assert.ok(server.exited(), 'the server is still running');
    assert.doesNotMatch(server.logs(), /level=ERROR/, `the stop logged an error:\n${server.logs()}`);
  });
}

describe('live panel on SQLite', () => scenario('sqlite'));

const pg = postgresAvailable();
describe('live panel on PostgreSQL', { skip: pg === true ? false : pg }, () => scenario('postgres'));
