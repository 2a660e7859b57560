// Clients of a running Parley: GraphQL over HTTP with fetch, and live
// subscriptions with the graphql-ws client (graphql-transport-ws) over ws.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

/** The timeout of every wait for a server message. */
export const WAIT_MS = 10_000;

/** POSTs an operation and returns the whole response: { status, body }. */
export async function gqlRaw(server, token, query, variables) {
  const headers = { 'content-type': 'application/json', accept: 'application/graphql-response+json, application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(server.url, {
    method: 'POST',
    headers,
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`HTTP ${res.status}: not JSON: ${text.slice(0, 500)}`);
  }
  return { status: res.status, body };
}

/** POSTs an operation and returns its data; any GraphQL error throws. */
export async function gql(server, token, query, variables) {
  const { status, body } = await gqlRaw(server, token, query, variables);
  if (status !== 200 || body.errors?.length) {
    throw new Error(`HTTP ${status}: ${JSON.stringify(body.errors ?? body)}\nfor ${query.trim().slice(0, 200)}`);
  }
  return body.data;
}

export async function login(server, email, password) {
  const data = await gql(server, null, `mutation($e: String!, $p: String!) {
    login(email: $e, password: $p) { token operator { id role } } }`, { e: email, p: password });
  return data.login;
}

/**
 * Arranges a desk through the API as an administrator would: an operator,
 * a TO_ALL queue with that operator as its member, an API channel of the
 * queue and an integration API key; the operator logs in and becomes ACTIVE.
 */
export async function setupDesk(server, { tag = 'e2e' } = {}) {
  const admin = await login(server, server.admin.email, server.admin.password);
  const op = { email: `olga.${tag}@e2e.parley`, password: 'operator-password-1' };
  const created = await gql(server, admin.token, `mutation($in: CreateOperatorInput!) {
    createOperator(input: $in) { id status } }`, { in: { email: op.email, name: 'Olga Operator', password: op.password } });
  op.id = created.createOperator.id;
  const queue = await gql(server, admin.token, `mutation($in: CreateQueueInput!) {
    createQueue(input: $in) { id routingRule members { id } } }`, {
    // A high limit: every customer of the scenario is offered to the operator (R7).
    in: { name: `Sales ${tag}`, routingRule: 'TO_ALL', chatLimit: 100, memberIDs: [op.id] },
  });
  const channel = await gql(server, admin.token, `mutation($in: CreateChannelInput!) {
    createChannel(input: $in) { id provider active } }`, {
    in: { name: `API ${tag}`, provider: 'API', queueID: queue.createQueue.id },
  });
  const key = await gql(server, admin.token, `mutation($in: CreateApiKeyInput!) {
    createApiKey(input: $in) { key apiKey { id } } }`, { in: { name: `integration ${tag}`, role: 'INTEGRATION' } });
  const session = await login(server, op.email, op.password);
  op.token = session.token;
  const status = await gql(server, op.token, `mutation { setMyStatus(status: ACTIVE) { status } }`);
  if (status.setMyStatus.status !== 'ACTIVE') throw new Error(`setMyStatus answered ${JSON.stringify(status)}`);
  return {
    server,
    admin,
    op,
    queueId: queue.createQueue.id,
    channelId: channel.createChannel.id,
    key: key.createApiKey.key,
  };
}

/** A customer message through the API channel, as the integration. */
export async function inbound(desk, customer, text) {
  const data = await gql(desk.server, desk.key, `mutation($in: InboundMessageInput!) {
    simulateInbound(input: $in) { newChat duplicate chat { id status } message { id } } }`, {
    in: { channelId: desk.channelId, externalId: customer, name: customer, text },
  });
  const r = data.simulateInbound;
  return { chatId: r.chat.id, messageId: r.message.id, newChat: r.newChat };
}

/**
 * Resolves once a chat has been offered. On PostgreSQL a new chat that
 * arrives while another new chat of its queue is being routed is routed by
 * a release of the queue just after its message is stored, so the offer
 * may follow the answer to simulateInbound by a few milliseconds.
 */
export async function waitOffered(desk, chatId) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const data = await gql(desk.server, desk.key, `query($id: ID!) { node(id: $id) { ... on Chat { offeredAt } } }`, { id: chatId });
    if (data.node?.offeredAt) return;
    if (Date.now() > deadline) throw new Error(`chat ${chatId} was not offered within ${WAIT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export async function acceptChat(desk, chatId) {
  return (await gql(desk.server, desk.op.token, `mutation($id: ID!) { acceptChat(id: $id) { id status } }`, { id: chatId })).acceptChat;
}

export async function sendMessage(desk, chatId, text) {
  const data = await gql(desk.server, desk.op.token, `mutation($id: ID!, $t: String!) {
    sendMessage(chatId: $id, text: $t) { id } }`, { id: chatId, t: text });
  return { messageId: data.sendMessage.id };
}

export const PANEL = `subscription Panel($after: ID) {
  panel(after: $after) { id type notify chatId operatorId message { id text } }
}`;

/**
 * A graphql-ws client authenticated in connection_init, that never retries
 * (a resumption is the test's business) and exposes its raw ws socket so
 * that a test can drop it without a closing handshake.
 */
export function liveClient(server, token, { connectionParams } = {}) {
  const state = { socket: null, closed: [] };
  const client = createClient({
    url: server.wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: connectionParams ?? (token ? { Authorization: `Bearer ${token}` } : {}),
    retryAttempts: 0,
    lazy: true,
    on: {
      connected: (socket) => {
        state.socket = socket;
      },
      closed: (event) => {
        state.closed.push({ code: event?.code, reason: event?.reason });
      },
    },
  });
  return {
    client,
    state,
    /** Starts a subscription and returns its collector. */
    subscribe(query, variables) {
      const sub = new Collector();
      sub.dispose = client.subscribe({ query, variables }, sub.sink());
      return sub;
    },
    /** Drops the TCP connection abruptly: no close frame is sent. */
    drop() {
      if (!state.socket) throw new Error('not connected');
      state.socket.terminate();
    },
    async dispose() {
      await client.dispose();
    },
  };
}

/** Collects what a subscription delivers and lets a test wait for it. */
export class Collector {
  events = [];
  errors = [];
  /** The error that ended the subscription (a CloseEvent or GraphQL errors). */
  failure = undefined;
  completed = false;
  #waiters = new Set();

  sink() {
    return {
      next: (value) => {
        if (value.errors?.length) this.errors.push(value.errors);
        const ev = value.data && Object.values(value.data)[0];
        if (ev) this.events.push(ev);
        this.#wake();
      },
      error: (err) => {
        this.failure = err;
        this.#wake();
      },
      complete: () => {
        this.completed = true;
        this.#wake();
      },
    };
  }

  #wake() {
    for (const w of [...this.#waiters]) w();
  }

  /**
   * Waits until check() returns a value other than undefined, re-evaluated
   * at every delivery; fails after timeout ms or when the subscription
   * ends first.
   */
  until(check, what, timeout = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(probe);
      };
      const probe = () => {
        let v;
        try {
          v = check(this);
        } catch (err) {
          done();
          reject(err);
          return;
        }
        if (v !== undefined) {
          done();
          resolve(v);
        } else if (this.failure !== undefined || this.completed) {
          done();
          reject(new Error(`the subscription ended (${describeError(this.failure) ?? 'complete'}) before ${what}; got ${this.summary()}`));
        }
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(probe);
        reject(new Error(`timed out after ${timeout} ms waiting for ${what}; got ${this.summary()}`));
      }, timeout);
      this.#waiters.add(probe);
      probe();
    });
  }

  /** Waits for an event matching pred and returns it. */
  waitFor(pred, what, timeout) {
    return this.until((c) => c.events.find(pred), what, timeout);
  }

  /** Waits for the end of the subscription and returns its failure. */
  waitEnd(what = 'the end of the subscription', timeout) {
    return new Promise((resolve, reject) => {
      this.until(() => undefined, what, timeout).then(resolve, (err) => {
        if (this.failure !== undefined || this.completed) resolve(this.failure);
        else reject(err);
      });
    });
  }

  summary() {
    const errs = this.errors.length ? ` errors ${JSON.stringify(this.errors)}` : '';
    return `${this.events.length} events [${this.events.map((e) => `${e.id}:${e.type}`).join(' ')}]${errs}`;
  }
}

export function describeError(err) {
  if (err === undefined) return undefined;
  if (err && typeof err === 'object' && 'code' in err && 'reason' in err) return `close ${err.code} ${err.reason}`;
  if (Array.isArray(err)) return JSON.stringify(err);
  return String(err?.message ?? err);
}
