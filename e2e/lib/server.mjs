// Starts a real Parley server process for a test file: the binary from
// $PARLEY_BIN (what .ci/run provides) or one built here with `go build`,
// on a free loopback port, over a temporary SQLite directory or a fresh
// PostgreSQL schema, with a first administrator from the environment.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

// Every process started by this file, killed when node exits whatever
// happens (a failed assertion, an uncaught error, the runner's timeout).
const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => process.exit(130));
}

let builtBinary;

/** The server binary: $PARLEY_BIN, else built once per test process. */
export function serverBinary() {
  if (process.env.PARLEY_BIN) return process.env.PARLEY_BIN;
  if (builtBinary) return builtBinary;
  const dir = mkdtempSync(join(tmpdir(), 'parley-e2e-bin-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'parley');
  const r = spawnSync('go', ['build', '-o', out, './server'], { cwd: repoRoot, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.error) throw new Error(`go build: ${r.error.message} (set PARLEY_BIN to a built server instead)`);
  if (r.status !== 0) throw new Error(`go build ./server failed with status ${r.status}`);
  builtBinary = out;
  return out;
}

/** A TCP port that was free a moment ago (startServer retries if it is taken). */
function freePort() {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolvePort(port));
    });
  });
}

/** Whether the PostgreSQL variant can run: TEST_DATABASE_URL and psql. */
export function postgresAvailable() {
  if (!process.env.TEST_DATABASE_URL) return 'TEST_DATABASE_URL is not set';
  const r = spawnSync('psql', ['--version'], { stdio: 'ignore' });
  if (r.error || r.status !== 0) return 'psql is not installed (it creates and drops the fresh schema)';
  return true;
}

function psql(url, sql) {
  const r = spawnSync('psql', [url, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql], { encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw new Error(`psql: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`psql ${sql}: ${r.stderr}`);
}

/**
 * A fresh PostgreSQL schema in the database of TEST_DATABASE_URL (like
 * desk/store/storetest): returns the DATABASE_URL that uses it and a
 * function that drops it.
 */
function freshSchema() {
  const base = new URL(process.env.TEST_DATABASE_URL);
  if (!base.searchParams.get('sslmode')) base.searchParams.set('sslmode', 'disable');
  const schema = `e2e_${randomBytes(6).toString('hex')}`;
  psql(base.toString(), `CREATE SCHEMA ${schema}`);
  const url = new URL(base);
  url.searchParams.set('search_path', schema);
  return { url: url.toString(), drop: () => psql(base.toString(), `DROP SCHEMA IF EXISTS ${schema} CASCADE`) };
}

const ADMIN = { email: 'ada@e2e.parley', password: 'e2e-admin-password-1' };

/**
 * Starts a server and waits until /readyz answers 200.
 * @param {{database?: 'sqlite' | 'postgres', env?: Record<string, string>}} opts
 *   env: more variables for the server (they override the defaults here)
 */
export async function startServer({ database = 'sqlite', env: extraEnv = {} } = {}) {
  const bin = serverBinary();
  const dataDir = mkdtempSync(join(tmpdir(), 'parley-e2e-data-'));
  let schema;
  const env = { ...process.env };
  delete env.DATABASE_URL;
  delete env.PARLEY_DEMO;
  if (database === 'postgres') {
    schema = freshSchema();
    env.DATABASE_URL = schema.url;
  }
  Object.assign(env, {
    PARLEY_DATA_DIR: dataDir,
    PARLEY_ADMIN_EMAIL: ADMIN.email,
    PARLEY_ADMIN_PASSWORD: ADMIN.password,
    PARLEY_LOG_LEVEL: 'warn',
    PARLEY_INTROSPECTION: 'false',
  }, extraEnv);
  const cleanup = () => {
    rmSync(dataDir, { recursive: true, force: true });
    if (schema) schema.drop();
  };
  try {
    // A port found free may be taken before the server binds it: retry
    // with another one when the process exits with "address already in use".
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const proc = await launch(bin, { ...env, PARLEY_ADDR: `127.0.0.1:${port}` }, port);
      if (proc.ok) return { ...proc.server, database, admin: ADMIN, stop: () => proc.server.kill().finally(cleanup) };
      if (!(proc.addrInUse && attempt < 3)) throw new Error(proc.error);
    }
  } catch (err) {
    cleanup();
    throw err;
  }
}

async function launch(bin, env, port) {
  const child = spawn(bin, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let log = '';
  const collect = (chunk) => {
    log += chunk;
    if (log.length > 200_000) log = log.slice(-100_000);
  };
  child.stdout.setEncoding('utf8').on('data', collect);
  child.stderr.setEncoding('utf8').on('data', collect);
  let exited = null;
  const exit = new Promise((res) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      children.delete(child);
      res(exited);
    });
    child.once('error', (err) => {
      exited = { code: null, signal: null, error: err };
      children.delete(child);
      res(exited);
    });
  });
  const base = `http://127.0.0.1:${port}`;
  const kill = async () => {
    if (exited) return exited;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exit;
    clearTimeout(timer);
    return exited;
  };
  // Bounded readiness loop: up to 30 s, one probe every 100 ms.
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (exited) {
      return {
        ok: false,
        addrInUse: /address already in use/i.test(log),
        error: `the server exited before it was ready (${JSON.stringify(exited)}):\n${log}`,
      };
    }
    try {
      const res = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(1_000) });
      if (res.status === 200 && (await res.json()).status === 'ready') {
        return {
          ok: true,
          server: {
            port,
            url: `${base}/graphql`,
            wsUrl: `ws://127.0.0.1:${port}/graphql`,
            base,
            pid: child.pid,
            logs: () => log,
            exited: () => exited,
            kill,
          },
        };
      }
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await kill();
  return { ok: false, error: `the server was not ready within 30 s:\n${log}` };
}
