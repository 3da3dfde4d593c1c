// A real OpenID provider for the sign-in tests: panva's oidc-provider (OpenID Certified), on
// 127.0.0.1 only. Usage: node provider.mjs; it listens on a free port and prints "port N",
// then reads one line of JSON from stdin: {"client": {"client_id", "client_secret",
// "redirect_uris"}, "accounts": {"alice": {"password", "email", "groups": [...]}}} (the
// client's redirect URI names a port known only after the provider's), and prints
// "ready ISSUER". The sign-in form is this file's own (a login and a password checked against
// the accounts); consent is implied for the one first-party client, as a company's provider
// does for its own tools. Stops when stdin closes.
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import { timingSafeEqual } from 'node:crypto';
import Provider from 'oidc-provider';

const server = createServer();
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const issuer = `http://127.0.0.1:${server.address().port}`;
process.stdout.write(`port ${server.address().port}\n`);
const lines = createInterface({ input: process.stdin });
const first = await new Promise((resolve) => { lines.once('line', resolve); });
lines.on('close', () => process.exit(0));
const config = JSON.parse(first);
const accounts = config.accounts;

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function same(a, b) {
  const x = Buffer.from(String(a)); const y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

const provider = new Provider(issuer, {
  clients: [{ ...config.client, grant_types: ['authorization_code'], response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic' }],
  pkce: { required: () => true },
  cookies: { keys: ['gitops-test-provider-cookie-key'] },
  claims: { openid: ['sub'], profile: ['name', 'preferred_username'], email: ['email'],
    groups: ['groups'] },
  scopes: ['openid', 'profile', 'email', 'groups'],
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: account.name ?? id, preferred_username: id,
          email: account.email, groups: account.groups ?? [] };
      },
    };
  },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email groups');
    grant.addOIDCClaims(['name', 'preferred_username', 'email', 'groups']);
    await grant.save();
    return grant;
  },
});

function form(uid, message) {
  return `<!doctype html><html><head><title>Provider sign-in</title></head><body>
<h1>Sign in to the test provider</h1>${message ? `<p id="problem">${escape(message)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Login <input name="login" autocomplete="off"></label>
<label>Password <input type="password" name="password"></label>
<button type="submit">Sign in</button></form></body></html>`;
}

async function body(ctx) {
  let text = '';
  for await (const chunk of ctx.req) text += chunk;
  return new URLSearchParams(text);
}

provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([\w-]+)(\/login)?$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== match[1]) ctx.throw(400, 'interaction mismatch');
  ctx.type = 'html';
  if (!match[2]) {
    ctx.body = form(details.uid, '');
    return undefined;
  }
  const fields = await body(ctx);
  const login = fields.get('login') ?? '';
  const account = Object.hasOwn(accounts, login) ? accounts[login] : undefined;
  if (!account || !same(fields.get('password') ?? '', account.password)) {
    ctx.status = 401;
    ctx.body = form(details.uid, 'wrong login or password');
    return undefined;
  }
  await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: login } },
    { mergeWithLastSubmission: false });
  return undefined;
});

server.on('request', provider.callback());
process.stdout.write(`ready ${issuer}\n`);
