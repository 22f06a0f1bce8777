import { authTokenHandlers } from "./auth-tokens.js";
import { buildHandlers } from "./builds.js";
import type { OperationHandlers, Services } from "./context.js";
import { imageHandlers } from "./images.js";
import { managedImageHandlers } from "./managed-images.js";
import { microvmHandlers } from "./microvms.js";
import { tagHandlers } from "./tags.js";
import { versionHandlers } from "./versions.js";

/** Every operation's handler, one module per resource. The type requires all 24. */
export function createHandlers(services: Services): OperationHandlers {
  return {
    ...imageHandlers(services),
    ...versionHandlers(services),
    ...buildHandlers(services),
    ...microvmHandlers(services),
    ...authTokenHandlers(services),
    ...tagHandlers(services),
    ...managedImageHandlers(services),
  };
}
