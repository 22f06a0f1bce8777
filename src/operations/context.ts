import type { Logger } from "pino";
import type { OperationName, Operations } from "../api/generated/types.js";
import type { Engine } from "../engine/engine.js";
import type { MicrovmLifecycle } from "../lifecycle/microvm-states.js";
import type { Store } from "../store/store.js";
import type { Owner } from "../store/records.js";
import type { TokenAuthority } from "../tokens/endpoint-token.js";
import type { HostPlatform } from "../platform.js";
import type { Paginator } from "./pagination.js";

/** What a handler knows of its request: never the HTTP request itself. */
export interface RequestContext {
  requestId: string;
  owner: Owner;
  log: Logger;
}

export interface ServiceLimits {
  /** MicroVMs that are not TERMINATED, per account and region (ServiceQuotaExceededException beyond). */
  maxLiveMicrovms: number;
}

/** The parts of the service the handlers work with. */
export interface Services {
  store: Store;
  engine: Engine;
  lifecycle: MicrovmLifecycle;
  paginator: Paginator;
  tokens: TokenAuthority;
  platform: HostPlatform;
  limits: ServiceLimits;
  /** Base of MicroVM endpoints: `https://{microvmId}.` + this. */
  endpointDomain: string;
  now: () => Date;
}

export type Handler<K extends OperationName> = (
  input: Operations[K]["input"],
  context: RequestContext,
) => Promise<Operations[K]["output"]>;

/** Every operation of the model must have a handler: the compiler checks it. */
export type OperationHandlers = { [K in OperationName]: Handler<K> };
