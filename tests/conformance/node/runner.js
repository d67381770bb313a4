#!/usr/bin/env node
// The Node.js runner of the adcache conformance cases (tests/conformance/README.md): the same
// cases as the Python runner, sent with ioredis as any Node.js service would call adcache.
//
//   node runner.js --url redis://127.0.0.1:6379 [--cluster] --cases ../cases \
//     --contracts ../../../functions/adcache.contracts.json [--json] [--only <substring>]
//
// Exit status 0 when every case passed. The regions between `docs:begin` and `docs:end` are
// copied into docs/clients.md (a test keeps them in step).
'use strict';

const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const yaml = require('js-yaml');

// docs:begin connect
const Redis = require('ioredis');

// A standalone server, or a cluster: ioredis.Cluster computes each command's slot from its keys
// (for FCALL: the keys after numkeys) and sends it to the primary that owns that slot.
function connect(url, cluster) {
  if (!cluster) return new Redis(url, { maxRetriesPerRequest: 1 });
  const u = new URL(url);
  return new Redis.Cluster([{ host: u.hostname, port: Number(u.port || 6379) }], {
    redisOptions: { maxRetriesPerRequest: 1 },
  });
}
// docs:end connect

// docs:begin fcall
// One adcache call. `readonly` comes from the contract (functions/adcache.contracts.json:
// "command": "FCALL_RO" for functions flagged no-writes, which may also run on replicas).
// Every key of one call shares one {hash tag}, so the call is one round trip to one node.
async function fcall(client, name, keys, args, readonly) {
  const command = readonly ? 'FCALL_RO' : 'FCALL';
  return client.call(command, name, keys.length, ...keys, ...args);
}

// Errors the library raises start with a stable code: `ADCACHE_BADARG price must be ...`.
// A cluster refuses keys of two slots itself, with `CROSSSLOT ...`, before the function runs.
function errorCode(err) {
  return String(err.message || err).split(' ', 1)[0];
}
// docs:end fcall

// docs:begin example
// Keys are `ad:{<letter>:<id>}:<suffix>` (lua/keyspace.yaml): every key of one call carries the
// same {tag}, here the campaign's. Argument and reply formats: docs/FUNCTIONS.md.
function budgetKeys(campaignId) {
  const tag = `{c:${campaignId}}`;
  return ['camp', 'budget', 'resv', 'resvx', 'settled', 'settledx'].map((s) => `ad:${tag}:${s}`);
}

async function example(client, campaignId) {
  // What is deployed: a field/value array [name, adcache, version, x.y.z, sha256, <hex>].
  const v = await fcall(client, 'ac_version', [], [], true);
  const version = v[v.indexOf('version') + 1];
  try {
    // Reserve 1.50 (micros) for 60 s under reservation id r1: a retry with the same id and
    // amount is answered again, so it is safe after a timeout.
    await fcall(client, 'ac_budget_reserve', budgetKeys(campaignId), ['r1', '1500000', '60000'],
      false);
    return { version, reserve: 'ok' };
  } catch (err) {
    return { version, reserve: errorCode(err) }; // ADCACHE_NOTFOUND: no such campaign
  }
}
// docs:end example

const READ = new Set(['EXISTS', 'PTTL', 'TTL', 'HGET', 'HLEN', 'TYPE', 'ZCARD', 'ZSCORE', 'LLEN',
  'SCARD', 'XLEN', 'GET', 'HEXISTS', 'PFCOUNT', 'SISMEMBER']);
const SETUP = new Set(['SET', 'HSET', 'RPUSH', 'SADD', 'ZADD', 'PEXPIRE', 'DEL', 'XADD', 'XGROUP',
  'XREADGROUP']);
const VAR = /\{\{\s*([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+))?\s*\}\}/g;

function parseArgs(argv) {
  const o = { cluster: false, json: false, only: '' };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--cluster') o.cluster = true;
    else if (a === '--json') o.json = true;
    else if (a === '--url') o.url = argv[++i];
    else if (a === '--cases') o.cases = argv[++i];
    else if (a === '--contracts') o.contracts = argv[++i];
    else if (a === '--only') o.only = argv[++i];
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.url || !o.cases || !o.contracts) throw new Error('need --url, --cases and --contracts');
  return o;
}

// ---- loading: the same expansion as tests/conformance/pyrunner.py ----

function variant(base, change) {
  const call = { call: base.call, keys: [...(base.keys || [])], args: [...(base.args || [])] };
  if ('keys' in change) call.keys = [...change.keys];
  if ('args' in change) call.args = [...change.args];
  for (const [i, v] of Object.entries(change.set_key || {})) call.keys[Number(i)] = v;
  for (const [i, v] of Object.entries(change.set_arg || {})) call.args[Number(i)] = v;
  call.args.push(...(change.more_args || []));
  for (const what of ['keys', 'args']) {
    const fill = change[`fill_${what}`];
    if (!fill) continue;
    for (let i = 0; i < Number(fill[0]); i++) {
      for (const p of fill[1]) call[what].push(String(p).replace('%i', String(i)));
    }
  }
  return call;
}

function loadCases(dir) {
  const out = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
    const doc = yaml.load(fs.readFileSync(path.join(dir, file), 'utf8')) || {};
    const fileVars = doc.vars || {};
    for (const fn of doc.functions || []) {
      const vars = { vars: { ...fileVars, ...(fn.vars || {}) } };
      const base = { call: fn.fn, keys: fn.keys || [], args: fn.args || [] };
      const setup = fn.setup || [];
      out.push({ name: `${fn.fn}: ok`, file,
        steps: [vars, ...setup, { ...base, expect: fn.ok || {} }, ...(fn.after || [])] });
      for (const [code, changes] of Object.entries(fn.errors || {})) {
        (Array.isArray(changes) ? changes : [changes]).forEach((change, n) => {
          const steps = [vars];
          if (!change.no_setup) steps.push(...setup);
          if ('wrongtype' in change) {
            const key = change.wrongtype;
            steps.push({ redis: ['DEL', key] }, { redis: ['SET', key, 'junk', 'PX', '60000'] });
          }
          steps.push(...(change.steps || []));
          const want = [code, ...('also' in change ? [change.also] : [])];
          steps.push({ ...variant(base, change), expect: { error: want } });
          steps.push(...(change.after || []));
          out.push({ name: `${fn.fn}: ${code}${n ? ` #${n + 1}` : ''}`, file, steps });
        });
      }
    }
    for (const c of doc.cases || []) {
      out.push({ name: c.name, file, steps: [{ vars: { ...fileVars, ...(c.vars || {}) } }, ...c.steps] });
    }
  }
  return out;
}

// ---- matching ----

function sub(value, env) {
  if (Array.isArray(value)) return value.map((v) => sub(v, env));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, sub(v, env)]));
  }
  if (typeof value !== 'string') return value;
  for (let i = 0; i < 5; i++) {
    const next = value.replace(VAR, (_, name, sign, n) => {
      if (!(name in env)) throw new Error(`unknown variable {{${name}}}`);
      let v = env[name];
      if (sign) v = Number(v) + (sign === '+' ? Number(n) : -Number(n));
      return String(v);
    });
    if (next === value) break;
    value = next;
  }
  return value;
}

const isInt = (v) => typeof v === 'number' && Number.isInteger(v);
const PLACEHOLDERS = {
  $any: () => true,
  $int: (v) => isInt(v),
  $str: (v) => typeof v === 'string',
  $id: (v) => typeof v === 'string' && v !== '',
  $time: (v, env) => isInt(v) && Math.abs(v - Number(env.now)) < 86400000 * 400,
  $array: (v) => Array.isArray(v),
  $dec: (v) => typeof v === 'string' && /^-?\d+$/.test(v),
};

function match(expected, actual, env) {
  if (typeof expected === 'string' && expected in PLACEHOLDERS) {
    return PLACEHOLDERS[expected](actual, env);
  }
  if (typeof expected === 'string' && expected.startsWith('$int:')) {
    const [lo, hi] = expected.slice(5).split('..');
    return isInt(actual) && (!lo || actual >= Number(lo)) && (!hi || actual <= Number(hi));
  }
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length === expected.length &&
      expected.every((e, i) => match(e, actual[i], env));
  }
  if (expected === null) return actual === null;
  // RESP types are part of the contract: an integer reply is not a bulk string of digits.
  return typeof expected === typeof actual && expected === actual;
}

function asMap(reply) {
  if (!Array.isArray(reply) || reply.length % 2) {
    throw new Error(`expected a field/value array, got ${JSON.stringify(reply).slice(0, 200)}`);
  }
  const m = new Map();
  for (let i = 0; i < reply.length; i += 2) m.set(String(reply[i]), reply[i + 1]);
  return m;
}

function select(reply, sel) {
  if (sel === '.') return reply;
  if (typeof sel === 'number') return reply[sel];
  return asMap(reply).get(sel);
}

function check(where, expect, reply, err, env, cluster) {
  const show = (v) => JSON.stringify(v === undefined ? null : v).slice(0, 300);
  if (expect.error !== undefined) {
    const codes = Array.isArray(expect.error) ? [...expect.error] : [expect.error];
    if (cluster && codes.includes('ADCACHE_CROSSSLOT')) codes.push('CROSSSLOT');
    if (!codes.includes(err)) {
      throw new Error(`${where}: expected error ${codes}, got ${err || 'reply'} ${show(reply)}`);
    }
    return;
  }
  if (err) throw new Error(`${where}: unexpected error ${err}`);
  if ('reply' in expect && !match(expect.reply, reply, env)) {
    throw new Error(`${where}: expected ${show(expect.reply)}, got ${show(reply)}`);
  }
  if ('map' in expect) {
    const got = asMap(reply);
    for (const [k, v] of Object.entries(expect.map)) {
      if (!got.has(k) || !match(v, got.get(k), env)) {
        throw new Error(`${where}: field ${k}: expected ${show(v)}, got ${show(got.get(k))}`);
      }
    }
  }
  if ('len' in expect && (!Array.isArray(reply) || reply.length !== Number(expect.len))) {
    throw new Error(`${where}: expected ${expect.len} entries, got ${show(reply)}`);
  }
  if ('between' in expect) {
    const [lo, hi] = expect.between.map(Number);
    if (!isInt(reply) || reply < lo || reply > hi) {
      throw new Error(`${where}: expected an integer in [${lo}, ${hi}], got ${show(reply)}`);
    }
  }
}

// ---- running ----

async function serverMs(client) {
  const [sec, usec] = await client.call('TIME');
  return Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
}

async function send(client, parts) {
  try {
    return [await client.call(...parts), null];
  } catch (e) {
    if (e && e.name === 'ReplyError') return [null, errorCode(e)];
    throw e;
  }
}

async function runCase(client, functions, c, cluster) {
  const env = { uid: `n${crypto.randomBytes(6).toString('hex')}`, now: await serverMs(client) };
  for (let i = 0; i < c.steps.length; i++) {
    const where = `${c.name} [${c.file}] step ${i}`;
    const raw = c.steps[i];
    if ('vars' in raw) {
      Object.assign(env, raw.vars);
      continue;
    }
    const step = sub(raw, env);
    let reply;
    let err;
    if ('call' in step) {
      const keys = (step.keys || []).map(String);
      const args = (step.args || []).map(String);
      const spec = functions[step.call];
      const readonly = spec ? spec.command === 'FCALL_RO' : false;
      try {
        reply = await fcall(client, step.call, keys, args, readonly);
        err = null;
      } catch (e) {
        if (!(e && e.name === 'ReplyError')) throw e;
        reply = null;
        err = errorCode(e);
      }
    } else if ('redis' in step) {
      const parts = step.redis.map(String);
      const cmd = parts[0].toUpperCase();
      if (!READ.has(cmd) && !SETUP.has(cmd)) throw new Error(`${where}: ${cmd} is not allowed`);
      [reply, err] = await send(client, parts);
    } else {
      throw new Error(`${where}: a step needs call, redis or vars`);
    }
    check(where, step.expect || {}, reply, err, env, cluster);
    for (const [name, sel] of Object.entries(step.save || {})) env[name] = select(reply, sel);
  }
}

async function main() {
  const opts = parseArgs(process.argv);
  const functions = JSON.parse(fs.readFileSync(opts.contracts, 'utf8')).functions;
  const cases = loadCases(opts.cases).filter((c) => c.name.includes(opts.only));
  const client = connect(opts.url, opts.cluster);
  const failed = [];
  let passed = 0;
  let ex;
  try {
    ex = await example(client, `n${crypto.randomBytes(6).toString('hex')}`);
    for (const c of cases) {
      try {
        await runCase(client, functions, c, opts.cluster);
        passed += 1;
      } catch (e) {
        failed.push(`${c.name}: ${e.message}`);
        if (!opts.json) console.error(`FAIL ${c.name}: ${e.message}`);
      }
    }
  } finally {
    client.disconnect();
  }
  const summary = { runner: 'node', ioredis: require('ioredis/package.json').version,
    cluster: opts.cluster, example: ex, passed, failed };
  if (!opts.json) console.log(`${passed} passed, ${failed.length} failed`);
  console.log(JSON.stringify(summary));
  process.exitCode = failed.length ? 1 : 0;
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exitCode = 2;
});
