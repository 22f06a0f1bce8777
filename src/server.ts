import { randomBytes } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { pino, type Logger } from "pino";
import { Accounts } from "./accounts.js";
import { buildApi } from "./api/http.js";
import { loadServiceModel } from "./api/model.js";
import { SigV4Verifier } from "./api/sigv4.js";
import type { ServerConfig } from "./config/config.js";
import type { CloseOptions, Engine } from "./engine/engine.js";
import { MicrovmLifecycle } from "./lifecycle/microvm-states.js";
import { createEngine } from "./engine/create-engine.js";
import type { Services } from "./operations/context.js";
import { createHandlers } from "./operations/index.js";
import { recordManagedImages } from "./operations/managed-images.js";
import { Paginator } from "./operations/pagination.js";
import { detectHostPlatform } from "./platform.js";
import { openStore } from "./store/open.js";
import type { Store } from "./store/store.js";
import { TokenAuthority } from "./tokens/endpoint-token.js";
import { startEndpointProxy } from "./proxy/endpoint-proxy.js";
import { authorityDir, endpointCertificateNames, issueServerCertificate, loadOrCreateAuthority } from "./tls/certificate-authority.js";

/**
 * `microvms serve`: one process holding every part.
 *
 *   config ─► store (open, migrate) ─► keys ─► engine (reconcile what a previous run left)
 *          ─► endpoint proxy on host:proxyPort ─► control API on host:apiPort
 */

/** Endpoints are https://{microvmId}.microvms.localhost:{proxy port}: every *.localhost name reaches loopback. */
const ENDPOINT_DOMAIN = "microvms.localhost";

/** How long a clientToken answers retries with its first result, as AWS keeps them. */
const CLIENT_TOKEN_TTL_MS = 24 * 3600 * 1000;

export interface RunningServer {
  api: FastifyInstance;
  /** The control API's base URL, e.g. http://127.0.0.1:9600. */
  apiUrl: string;
  /** The endpoint proxy's URL, e.g. http://127.0.0.1:9601. */
  proxyUrl: string;
  store: Store;
  engine: Engine;
  log: Logger;
  /** Stops serving; running VMs are left for the next start to adopt unless `stopVms`. */
  close(options?: CloseOptions): Promise<void>;
}

async function signingKey(store: Store, name: string): Promise<Buffer> {
  return Buffer.from(await store.setting(name, () => randomBytes(32).toString("base64")), "base64");
}

export async function startServer(config: ServerConfig, log: Logger = pino({ level: config.logLevel })): Promise<RunningServer> {
  const accounts = Accounts.load(config.accountsFile);
  const model = loadServiceModel();
  const store = await openStore(config);
  try {
    const now = () => new Date();
    const lifecycle = new MicrovmLifecycle(store, now);
    const platform = detectHostPlatform();
    const engine = await createEngine({ config, store, lifecycle, platform, log: log.child({ part: "engine" }), now });
    const services: Services = {
      store,
      engine,
      lifecycle,
      paginator: new Paginator(await signingKey(store, "pagination-key")),
      tokens: new TokenAuthority(await signingKey(store, "endpoint-token-key")),
      platform,
      limits: { maxLiveMicrovms: config.maxLiveMicrovms },
      endpointDomain: `microvms.localhost:${config.proxyPort}`,
      now,
    };
    await recordManagedImages(services);
    await store.pruneClientTokens(new Date(Date.now() - CLIENT_TOKEN_TTL_MS));
    await engine.reconcile();

    const verifier = new SigV4Verifier({ accounts, signingName: model.metadata.signingName });
    const api = buildApi({ model, handlers: createHandlers(services), verifier, log: log.child({ part: "api" }) });
    // Endpoints are HTTPS with a certificate from the server's own CA (`microvms ca` prints it), and plain HTTP on the same port.
    const ca = await loadOrCreateAuthority(authorityDir(config.dataDir));
    const tls = await issueServerCertificate(ca, endpointCertificateNames(ENDPOINT_DOMAIN));
    const proxy = await startEndpointProxy({
      host: config.host,
      port: config.proxyPort,
      tokens: services.tokens,
      targets: engine.targets,
      log: log.child({ part: "proxy" }),
      domain: ENDPOINT_DOMAIN,
      tls,
    });
    services.endpointDomain = `${ENDPOINT_DOMAIN}:${proxy.port}`;
    await api.listen({ host: config.host, port: config.apiPort });
    const address = api.server.address();
    const port = typeof address === "object" && address ? address.port : config.apiPort;
    const apiUrl = `http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${port}`;
    log.info(
      { apiUrl, proxyUrl: proxy.url, caCert: ca.certPath, dataDir: config.dataDir, store: config.databaseUrl ? "postgres" : "sqlite", engine: engine.description },
      "microvms serving",
    );

    return {
      api,
      apiUrl,
      store,
      engine,
      log,
      proxyUrl: proxy.url,
      async close(options?: CloseOptions) {
        await api.close();
        await proxy.close();
        await engine.close(options);
        await store.close();
      },
    };
  } catch (error) {
    await store.close();
    throw error;
  }
}
