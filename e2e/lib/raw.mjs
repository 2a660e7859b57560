// A bare websocket (npm ws) speaking a GraphQL subprotocol by hand: for
// close codes, and for the legacy graphql-ws protocol (the one of the
// unmaintained subscriptions-transport-ws), which has no maintained client.
import WebSocket from 'ws';

import { WAIT_MS } from './client.mjs';

export class RawSocket {
  messages = [];
  close = undefined; // { code, reason } once closed
  #waiters = new Set();

  /** Opens a websocket with a subprotocol (and optional upgrade headers). */
  static open(url, protocol, headers = {}) {
    const raw = new RawSocket();
    raw.ws = new WebSocket(url, protocol, { headers });
    raw.ws.on('message', (data) => {
      raw.messages.push(JSON.parse(data.toString()));
      raw.#wake();
    });
    raw.ws.on('close', (code, reason) => {
      raw.close = { code, reason: reason.toString() };
      raw.#wake();
    });
    raw.ws.on('error', (err) => {
      raw.error = err;
      raw.#wake();
    });
    return new Promise((resolve, reject) => {
      raw.ws.once('open', () => {
        if (raw.ws.protocol !== protocol) reject(new Error(`the server chose subprotocol "${raw.ws.protocol}", want "${protocol}"`));
        else resolve(raw);
      });
      raw.ws.once('error', reject);
    });
  }

  #wake() {
    for (const w of [...this.#waiters]) w();
  }

  send(msg) {
    this.ws.send(JSON.stringify(msg));
  }

  /** Waits until check() returns a value other than undefined. */
  until(check, what, timeout = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(probe);
        reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.messages)} close ${JSON.stringify(this.close)}`));
      }, timeout);
      const probe = () => {
        let v;
        try {
          v = check(this);
        } catch (err) {
          clearTimeout(timer);
          this.#waiters.delete(probe);
          reject(err);
          return;
        }
        if (v !== undefined) {
          clearTimeout(timer);
          this.#waiters.delete(probe);
          resolve(v);
        }
      };
      this.#waiters.add(probe);
      probe();
    });
  }

  /** Waits for a message matching pred (skipping keep-alives) and returns it. */
  waitMessage(pred, what) {
    return this.until((s) => {
      const m = s.messages.find(pred);
      if (m) return m;
      if (s.close) throw new Error(`closed ${JSON.stringify(s.close)} before ${what}; got ${JSON.stringify(s.messages)}`);
      return undefined;
    }, what);
  }

  waitClose(what = 'the close') {
    return this.until((s) => s.close, what);
  }

  terminate() {
    this.ws.terminate();
  }
}
