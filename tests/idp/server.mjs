// Test OpenID Connect provider for clawgate's integration tests and the local demo.
//
//   node tests/idp/server.mjs CONFIG.json
//
// Listens on 127.0.0.1 (plain http), issuer http://127.0.0.1:<port>, and prints exactly one line
// `READY http://127.0.0.1:<port>` on stdout once it accepts requests. Everything else goes to
// stderr. The provider is oidc-provider; this file adds a login page, silent first-party consent
// and test-only admin endpoints under /__admin/ (never expose this server beyond loopback).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

import Provider from 'oidc-provider';

const loopbackAgent = new https.Agent({ rejectUnauthorized: false });

const configPath = process.argv[2];
if (!configPath) {
  process.stderr.write('usage: node server.mjs CONFIG.json\n');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));

const log = (...args) => process.stderr.write(`[test-idp] ${args.join(' ')}\n`);

// ---------------------------------------------------------------------------------------------
// Mutable test state. Admin endpoints change it; the provider reads it through closures, so TTL
// and user changes apply to the next request without rebuilding anything.

const DEFAULTS = {
  id_token_ttl_seconds: 3600,
  access_token_ttl_seconds: 3600,
  refresh_token_ttl_seconds: 14 * 24 * 3600,
  session_ttl_seconds: 14 * 24 * 3600,
  rotate_refresh_tokens: true,
  strict_offline_access: false,
  logout_auto_confirm: true,
};

const settings = {};
function applySettings(source) {
  for (const key of Object.keys(DEFAULTS)) {
    if (source[key] !== undefined && source[key] !== null) {
      const want = typeof DEFAULTS[key];
      if (typeof source[key] !== want) {
        throw new TypeError(`${key} must be a ${want}`);
      }
      settings[key] = source[key];
    }
  }
}
Object.assign(settings, DEFAULTS);
applySettings(config);
if (config.refresh === false) {
  // `refresh: false` switches refresh tokens off entirely (the grant is removed from clients).
  settings.refresh_disabled = true;
}

const users = new Map(); // sub -> user
function putUser(u) {
  for (const key of ['sub', 'username', 'password']) {
    if (typeof u[key] !== 'string' || !u[key]) throw new TypeError(`user.${key} must be a non-empty string`);
  }
  users.set(u.sub, {
    sub: u.sub,
    username: u.username,
    password: u.password,
    email: u.email ?? u.username,
    email_verified: u.email_verified ?? true,
    name: u.name ?? u.username,
    groups: Array.isArray(u.groups) ? [...u.groups] : [],
    extra_claims: u.extra_claims ?? {},
  });
}
for (const u of config.users ?? []) putUser(u);

function findUserByLogin(login) {
  const wanted = String(login).trim().toLowerCase();
  for (const u of users.values()) {
    if (u.username.toLowerCase() === wanted || String(u.email).toLowerCase() === wanted) return u;
  }
  return undefined;
}

const clients = new Map(); // client_id -> metadata (served to the provider through the adapter)

let failure = { mode: 'ok', delay_ms: 0, endpoints: ['discovery', 'jwks', 'token'], remaining: null };
const stats = {};

// ---------------------------------------------------------------------------------------------
// Signing keys. Newest first: oidc-provider signs with the first key matching the algorithm.

let keys = [];
function newKeys() {
  const stamp = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: `rsa-${stamp}`, use: 'sig', alg: 'RS256' },
    { ...ec, kid: `ec-${stamp}`, use: 'sig', alg: 'ES256' },
  ];
}
keys = newKeys();

// ---------------------------------------------------------------------------------------------
// In-memory adapter with a store shared across provider rebuilds (key rotation rebuilds the
// provider, sessions and grants must survive it). Clients are served from `clients`.

const store = new Map(); // `${model}:${id}` -> { payload, exp (epoch seconds) | undefined }
const sessionByUid = new Map(); // uid -> session id
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest']);
const now = () => Math.floor(Date.now() / 1000);

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.exp !== undefined && entry.exp <= now()) {
    store.delete(key);
    return undefined;
  }
  return entry;
}

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    if (this.model === 'Client') return;
    const exp = expiresIn ? now() + expiresIn : undefined;
    store.set(this.key(id), { payload: structuredClone(payload), exp });
    if (this.model === 'Session' && payload.uid) sessionByUid.set(payload.uid, id);
  }

  async find(id) {
    if (this.model === 'Client') {
      const c = clients.get(id);
      return c ? structuredClone(c) : undefined;
    }
    const entry = live(this.key(id));
    return entry ? structuredClone(entry.payload) : undefined;
  }

  async findByUid(uid) {
    const id = sessionByUid.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode() {
    return undefined;
  }

  async consume(id) {
    const entry = live(this.key(id));
    if (entry) entry.payload.consumed = now();
  }

  async destroy(id) {
    const entry = store.get(this.key(id));
    if (this.model === 'Session' && entry?.payload?.uid) sessionByUid.delete(entry.payload.uid);
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of store) {
      const model = key.slice(0, key.indexOf(':'));
      if (GRANTABLE.has(model) && entry.payload.grantId === grantId) store.delete(key);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Pages. Small, escaped, no external resources; ids/classes are what the Python helper reads.

const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
})[c]);

const STYLE = 'body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}'
  + 'label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.4rem;box-sizing:border-box}'
  + 'button{margin-top:1rem;padding:.5rem 1rem}.error{color:#b00020;font-weight:600}'
  + '.hint{color:#555;font-size:.9rem}';

function page(title, body) {
  return `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">`
    + `<meta name="viewport" content="width=device-width, initial-scale=1">`
    + `<title>${esc(title)}</title><style>${STYLE}</style></head><body>${body}</body></html>`;
}

function loginPage(uid, params, { error, username } = {}) {
  const known = [...users.values()].map((u) => esc(u.username)).join(', ');
  return page('Sign in - test IdP', `<h1>Sign in</h1>`
    + `<p class="hint">Test identity provider. Client <code>${esc(params.client_id)}</code>`
    + ` asks for <code>${esc(params.scope)}</code>.</p>`
    + (error ? `<p class="error" id="idp-error" role="alert">${esc(error)}</p>` : '')
    + `<form id="idp-login" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">`
    + `<label for="username">Username or email</label>`
    + `<input id="username" name="username" autocomplete="username" autofocus required`
    + ` value="${esc(username ?? params.login_hint ?? '')}">`
    + `<label for="password">Password</label>`
    + `<input id="password" name="password" type="password" autocomplete="current-password" required>`
    + `<button type="submit">Sign in</button></form>`
    + `<p><a href="/interaction/${esc(uid)}/abort">Cancel</a></p>`
    + `<p class="hint">Users: ${known}</p>`);
}

async function logoutSource(ctx, form) {
  // The provider hands over a form holding only the xsrf field; the confirm button goes inside
  // it so plain HTML parsers see one complete form. Browsers submit it without a click.
  const button = '<button type="submit" name="logout" value="yes" autofocus>Yes, sign me out</button>';
  const withButton = form.replace('</form>', `${button}</form>`);
  const auto = settings.logout_auto_confirm
    ? '<script>document.getElementById("op.logoutForm").submit()</script>'
    : '';
  ctx.body = page('Sign out - test IdP', `<h1 id="idp-logout">Sign out of the test IdP?</h1>${withButton}${auto}`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out - test IdP', '<h1 id="idp-logged-out">You are signed out.</h1>');
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error - test IdP', `<h1>Error</h1><p class="error" id="idp-error">`
    + `${esc(out.error)}: ${esc(out.error_description)}</p>`);
}

// ---------------------------------------------------------------------------------------------
// Provider.

async function findAccount(ctx, sub) {
  const user = users.get(sub);
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims() {
      const u = users.get(sub) ?? user; // admin edits apply to later tokens
      return {
        sub,
        email: u.email,
        email_verified: u.email_verified,
        name: u.name,
        preferred_username: u.username,
        groups: [...u.groups],
        ...u.extra_claims,
      };
    },
  };
}

// First-party test clients: every requested scope and claim is granted without a consent screen.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant || grant.accountId !== oidc.session.accountId) {
    grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
  }
  const scopes = [...oidc.requestParamOIDCScopes];
  if (scopes.length) grant.addOIDCScope(scopes.join(' '));
  const claims = [...oidc.requestParamClaims].filter((c) => c !== 'sub');
  if (claims.length) grant.addOIDCClaims(claims);
  await grant.save();
  return grant;
}

let issuer;
let provider;
const cookieKeys = [randomBytes(32).toString('base64url')];

function buildProvider() {
  const p = new Provider(issuer, {
    adapter: Adapter,
    clients: [],
    jwks: { keys },
    cookies: {
      keys: cookieKeys,
      // Lax rather than the default None: browsers drop SameSite=None cookies over plain http.
      long: { httpOnly: true, sameSite: 'lax', signed: true },
      short: { httpOnly: true, sameSite: 'lax', signed: true },
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'groups'],
      groups: ['groups'],
    },
    conformIdTokenClaims: false,
    responseTypes: ['code'],
    pkce: { methods: ['S256'], required: () => true },
    clientDefaults: {
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      id_token_signed_response_alg: 'RS256',
      token_endpoint_auth_method: 'client_secret_basic',
    },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      userinfo: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      // Logout tokens POSTed to each client's backchannel_logout_uri when a session ends.
      backchannelLogout: { enabled: true },
    },
    // The relying parties under test serve self-signed certificates on 127.0.0.1: the
    // provider's own calls to them (back-channel logout) accept those, and only those.
    httpOptions(url) {
      if (url.protocol === 'https:' && url.hostname === '127.0.0.1') {
        return { agent: loopbackAgent };
      }
      return {};
    },
    findAccount,
    loadExistingGrant,
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    ttl: {
      IdToken: () => settings.id_token_ttl_seconds,
      AccessToken: () => settings.access_token_ttl_seconds,
      RefreshToken: () => settings.refresh_token_ttl_seconds,
      Session: () => settings.session_ttl_seconds,
      Grant: () => settings.refresh_token_ttl_seconds,
      AuthorizationCode: 60,
      Interaction: 600,
    },
    issueRefreshToken: (ctx, client, code) => !settings.refresh_disabled
      && client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    rotateRefreshToken: () => settings.rotate_refresh_tokens,
    renderError,
  });
  p.on('server_error', (ctx, err) => log('server_error', err?.stack ?? err));
  return p;
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP layer: admin API, login pages, fault injection, then the provider.

function endpointOf(path) {
  if (path === '/.well-known/openid-configuration') return 'discovery';
  if (path === '/jwks') return 'jwks';
  if (path === '/token') return 'token';
  if (path === '/me') return 'userinfo';
  if (path === '/token/revocation') return 'revocation';
  if (path === '/token/introspection') return 'introspection';
  if (path === '/auth' || path.startsWith('/auth/')) return 'authorization';
  if (path.startsWith('/session/end')) return 'end_session';
  if (path.startsWith('/interaction/')) return 'interaction';
  return 'other';
}

async function readBody(req, limit = 1 << 20) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, body, type) {
  const buf = Buffer.from(body);
  res.writeHead(status, {
    'content-type': type,
    'content-length': buf.length,
    'cache-control': 'no-store',
  });
  res.end(buf);
}
const sendJson = (res, status, obj) => send(res, status, JSON.stringify(obj), 'application/json');
const sendHtml = (res, status, html) => send(res, status, html, 'text/html; charset=utf-8');

function clientMetadata(body) {
  const c = { ...body };
  if (typeof c.client_id !== 'string' || !c.client_id) throw new TypeError('client_id is required');
  if (!Array.isArray(c.redirect_uris) || !c.redirect_uris.length) throw new TypeError('redirect_uris is required');
  c.post_logout_redirect_uris ??= [];
  c.grant_types ??= settings.refresh_disabled ? ['authorization_code'] : ['authorization_code', 'refresh_token'];
  c.response_types ??= ['code'];
  if (!c.client_secret) c.token_endpoint_auth_method ??= 'none';
  return c;
}

async function putClient(body) {
  const c = clientMetadata(body);
  await provider.Client.validate(c); // throws with the provider's own error on bad metadata
  clients.set(c.client_id, c);
  return c;
}

function sessionCounts() {
  const counts = {};
  let total = 0;
  for (const key of [...store.keys()]) {
    if (!key.startsWith('Session:')) continue;
    const entry = live(key);
    const sub = entry?.payload?.accountId;
    if (!sub) continue; // an anonymous session (e.g. cookie set before sign-in)
    counts[sub] = (counts[sub] ?? 0) + 1;
    total += 1;
  }
  return { sessions: counts, total };
}

function revokeUser(sub) {
  let removed = 0;
  const grants = new Set();
  for (const [key, entry] of [...store]) {
    if (entry.payload?.accountId === sub) {
      if (key.startsWith('Grant:')) grants.add(entry.payload.jti);
      store.delete(key);
      removed += 1;
    }
  }
  for (const [key, entry] of [...store]) {
    if (entry.payload?.grantId && grants.has(entry.payload.grantId)) {
      store.delete(key);
      removed += 1;
    }
  }
  return removed;
}

async function admin(req, res, path) {
  const body = req.method === 'POST' ? JSON.parse((await readBody(req)) || '{}') : {};
  const route = `${req.method} ${path}`;
  switch (route) {
    case 'POST /__admin/clients': {
      const list = Array.isArray(body.clients) ? body.clients : [body];
      const out = [];
      for (const c of list) out.push((await putClient(c)).client_id);
      return sendJson(res, 200, { client_ids: out });
    }
    case 'POST /__admin/users': {
      const list = Array.isArray(body.users) ? body.users : [body];
      for (const u of list) putUser(u);
      return sendJson(res, 200, { subs: list.map((u) => u.sub) });
    }
    case 'POST /__admin/rotate-keys': {
      const fresh = newKeys();
      keys = body.keep_old ? [...fresh, ...keys] : fresh;
      provider = buildProvider();
      return sendJson(res, 200, { kid: fresh[0].kid, kids: keys.map((k) => k.kid) });
    }
    case 'GET /__admin/sessions':
      return sendJson(res, 200, sessionCounts());
    case 'POST /__admin/revoke': {
      if (typeof body.sub !== 'string') throw new TypeError('sub is required');
      return sendJson(res, 200, { removed: revokeUser(body.sub) });
    }
    case 'GET /__admin/config':
      return sendJson(res, 200, { ...settings });
    case 'POST /__admin/config':
      applySettings(body);
      return sendJson(res, 200, { ...settings });
    case 'POST /__admin/fail': {
      const mode = body.mode ?? 'ok';
      if (!['ok', 'down', 'slow'].includes(mode)) throw new TypeError('mode must be ok, down or slow');
      failure = {
        mode,
        delay_ms: Number(body.delay_ms ?? 0),
        endpoints: Array.isArray(body.endpoints) ? body.endpoints : ['discovery', 'jwks', 'token'],
        remaining: Number.isInteger(body.count) ? body.count : null,
      };
      return sendJson(res, 200, failure);
    }
    case 'GET /__admin/stats':
      return sendJson(res, 200, { ...stats });
    case 'POST /__admin/stats/reset':
      for (const k of Object.keys(stats)) delete stats[k];
      return sendJson(res, 200, {});
    case 'POST /__admin/reset':
      // Undo runtime tweaks between tests sharing one server; keys, users and clients stay.
      Object.assign(settings, DEFAULTS);
      applySettings(config);
      failure = { mode: 'ok', delay_ms: 0, endpoints: ['discovery', 'jwks', 'token'], remaining: null };
      for (const k of Object.keys(stats)) delete stats[k];
      return sendJson(res, 200, {});
    default:
      return sendJson(res, 404, { error: `no admin route ${route}` });
  }
}

async function autoConsent(interaction) {
  const { prompt: { details }, params, session: { accountId } } = interaction;
  let grant = interaction.grantId ? await provider.Grant.find(interaction.grantId) : undefined;
  if (!grant) grant = new provider.Grant({ accountId, clientId: params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return { consent: { grantId } };
}

async function interaction(req, res, path) {
  const [, , uid, action] = path.split('/'); // /interaction/<uid>[/<action>]
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return sendHtml(res, 400, page('Error - test IdP', `<h1>Error</h1><p class="error" id="idp-error">`
      + `${esc(err.message)} (the sign-in attempt expired or cookies were lost)</p>`));
  }
  if (details.uid !== uid) {
    return sendHtml(res, 400, page('Error - test IdP', '<p class="error" id="idp-error">interaction mismatch</p>'));
  }
  const { prompt, params } = details;

  if (action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  if (prompt.name === 'login') {
    if (req.method === 'POST' && action === 'login') {
      const form = new URLSearchParams(await readBody(req));
      const username = form.get('username') ?? '';
      const user = findUserByLogin(username);
      if (!user || user.password !== (form.get('password') ?? '')) {
        log('login failed for', JSON.stringify(username));
        return sendHtml(res, 401, loginPage(uid, params, { error: 'Invalid username or password.', username }));
      }
      return provider.interactionFinished(req, res, {
        login: { accountId: user.sub, amr: ['pwd'] },
      }, { mergeWithLastSubmission: false });
    }
    return sendHtml(res, 200, loginPage(uid, params));
  }

  if (prompt.name === 'consent') {
    return provider.interactionFinished(req, res, await autoConsent(details), { mergeWithLastSubmission: true });
  }

  return sendHtml(res, 400, page('Error - test IdP', `<p class="error" id="idp-error">unknown prompt ${esc(prompt.name)}</p>`));
}

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

async function handle(req, res) {
  const url = new URL(req.url, issuer);
  const path = url.pathname;

  if (path.startsWith('/__admin/')) return admin(req, res, path);

  const endpoint = endpointOf(path);
  stats[endpoint] = (stats[endpoint] ?? 0) + 1;

  const f = faultFor(endpoint);
  if (f === 'down') {
    res.setHeader('retry-after', '1');
    return sendJson(res, 503, { error: 'temporarily_unavailable', error_description: 'test IdP is down' });
  }
  if (f === 'slow') await sleep(failure.delay_ms);

  if (path.startsWith('/interaction/')) return interaction(req, res, path);

  if (path === '/auth' && req.method === 'GET' && !settings.strict_offline_access) {
    // oidc-provider follows OIDC Core 11 to the letter and drops offline_access unless the request
    // says prompt=consent. Most IdPs grant it anyway; behave like them unless told to be strict.
    const scope = (url.searchParams.get('scope') ?? '').split(' ');
    const prompt = (url.searchParams.get('prompt') ?? '').split(' ').filter(Boolean);
    if (scope.includes('offline_access') && !prompt.includes('none') && !prompt.includes('consent')) {
      url.searchParams.set('prompt', [...prompt, 'consent'].join(' '));
      req.url = `${url.pathname}${url.search}`;
    }
  }

  let callback = callbacks.get(provider);
  if (!callback) {
    callback = provider.callback();
    callbacks.set(provider, callback);
  }
  return callback(req, res);
}

const callbacks = new WeakMap(); // provider -> its node request listener

// Whether the configured fault hits this request; count-limited faults use up one unit each.
function faultFor(endpoint) {
  if (failure.mode === 'ok' || !failure.endpoints.includes(endpoint)) return 'ok';
  const { mode } = failure;
  if (failure.remaining !== null) {
    failure.remaining -= 1;
    if (failure.remaining <= 0) failure = { ...failure, mode: 'ok', remaining: null };
  }
  return mode;
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    const status = err?.status ?? (err instanceof TypeError || err instanceof SyntaxError ? 400 : 500);
    if (status >= 500) log('unhandled', err?.stack ?? err);
    if (!res.headersSent) {
      sendJson(res, status, { error: err?.message ?? String(err), error_description: err?.error_description });
    } else {
      res.destroy();
    }
  });
});

server.listen(Number(config.port ?? 0), '127.0.0.1', async () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  provider = buildProvider();
  try {
    for (const c of config.clients ?? []) await putClient(c);
  } catch (err) {
    log('bad client in config:', err?.message ?? err, err?.error_description ?? '');
    process.exit(2);
  }
  process.stdout.write(`READY ${issuer}\n`);
});

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (config.exit_on_stdin_close) {
  // The test harness holds our stdin open; if it dies without cleaning up, we follow it.
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}

