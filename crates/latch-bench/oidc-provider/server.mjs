// panva/oidc-provider configured like latch's benchmark (see docs/benchmarks.md), started by
// `latch-bench --oidc-provider`: the same two clients and secrets (from the environment),
// client_credentials, RFC 7662 introspection and RFC 7009 revocation, on latch's paths.
//
// Storage is an in-process Map: oidc-provider ships no durable store, and its own development
// adapter is an LRU of 1,000 entries, which would forget most of the benchmark's tokens.
// Nothing here is written to disk, so its figures carry no durability cost, unlike latch's.
import http from 'node:http';
import Provider, { errors } from 'oidc-provider';

const store = new Map();

class MapAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), { payload, expiresAt: Date.now() + expiresIn * 1000 });
  }
  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) { store.delete(this.key(id)); return undefined; }
    return entry.payload;
  }
  async findByUid() { return undefined; }
  async findByUserCode() { return undefined; }
  async consume(id) { const p = await this.find(id); if (p) p.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId() {}
}

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    adapter: MapAdapter,
    clients: [
      {
        client_id: env('BENCH_CLIENT_ID'),
        client_secret: env('BENCH_CLIENT_SECRET'),
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: 'read',
      },
      {
        client_id: env('BENCH_INTROSPECTOR_ID'),
        client_secret: env('BENCH_INTROSPECTOR_SECRET'),
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    scopes: ['read'],
    features: {
      clientCredentials: { enabled: true },
      // latch's rules, stated so oidc-provider does not warn about its defaults: any
      // confidential client may introspect; only the owner revokes, and a confidential caller
      // presenting another client's token is told so.
      introspection: {
        enabled: true,
        allowedPolicy: (ctx, client) => client.clientAuthMethod !== 'none',
      },
      revocation: {
        enabled: true,
        allowedPolicy: (ctx, client, token) => {
          if (token.clientId === client.clientId) return true;
          if (client.clientAuthMethod === 'none') return false;
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        },
      },
      devInteractions: { enabled: false },
    },
    routes: {
      token: '/oauth2/token',
      introspection: '/oauth2/introspect',
      revocation: '/oauth2/revoke',
    },
    ttl: { ClientCredentials: 3600 },
  });
  server.on('request', provider.callback());
  // The line latch-bench waits for, in latch's own words.
  console.log(`oidc-provider listening on http://127.0.0.1:${port}`);
});
