import { validation } from "../domain/service-errors.js";
import type { PortSpecification } from "../api/generated/types.js";
import type { MicrovmRecord } from "../store/records.js";
import type { PortScope, TokenClaims } from "../tokens/endpoint-token.js";
import type { OperationHandlers, Services } from "./context.js";
import { resolveMicrovm } from "./microvms.js";

/**
 * Tokens for a MicroVM's endpoint (CreateMicrovmAuthToken) and shell
 * (CreateMicrovmShellAuthToken), returned as {"X-aws-proxy-auth": token}, the
 * header the endpoint proxy checks.
 */
export const AUTH_HEADER = "X-aws-proxy-auth";

function portScopes(allowedPorts: PortSpecification[]): PortScope[] {
  return allowedPorts.map((spec, i): PortScope => {
    if (spec.allPorts) return { all: true };
    if (spec.range) {
      if (spec.range.startPort > spec.range.endPort) {
        throw validation(
          `Value at 'allowedPorts[${i}].range' failed to satisfy constraint: startPort (${spec.range.startPort}) ` +
            `must not be greater than endPort (${spec.range.endPort}).`,
        );
      }
      return { from: spec.range.startPort, to: spec.range.endPort };
    }
    return { from: spec.port!, to: spec.port! };
  });
}

function refuseEnded(microvm: MicrovmRecord): void {
  if (microvm.state === "TERMINATING" || microvm.state === "TERMINATED") {
    throw validation(`MicroVM ${microvm.microvmId} is ${microvm.state}; tokens are issued only for MicroVMs that are not terminated.`);
  }
}

export function authTokenHandlers(services: Services): Pick<
  OperationHandlers,
  "CreateMicrovmAuthToken" | "CreateMicrovmShellAuthToken"
> {
  const { store, tokens } = services;

  function issue(microvm: MicrovmRecord, kind: TokenClaims["kind"], ports: PortScope[], minutes: number) {
    const issuedAt = Math.floor(services.now().getTime() / 1000);
    const token = tokens.issue({
      kind,
      accountId: microvm.accountId,
      region: microvm.region,
      microvmId: microvm.microvmId,
      ports,
      issuedAt,
      expiresAt: issuedAt + minutes * 60,
    });
    return { authToken: { [AUTH_HEADER]: token } };
  }

  return {
    async CreateMicrovmAuthToken(input, { owner }) {
      const microvm = await resolveMicrovm(store, owner, input.microvmIdentifier);
      refuseEnded(microvm);
      return issue(microvm, "endpoint", portScopes(input.allowedPorts), input.expirationInMinutes);
    },

    async CreateMicrovmShellAuthToken(input, { owner }) {
      const microvm = await resolveMicrovm(store, owner, input.microvmIdentifier);
      refuseEnded(microvm);
      if (!microvm.config.ingressNetworkConnectors?.includes("SHELL_INGRESS")) {
        throw validation(
          `MicroVM ${microvm.microvmId} was not run with the SHELL_INGRESS ingress network connector, so it has no shell access.`,
        );
      }
      return issue(microvm, "shell", [{ all: true }], input.expirationInMinutes);
    },
  };
}
