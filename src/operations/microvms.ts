import type { GetMicrovmResponse } from "../api/generated/types.js";
import { conflict, notFound, ServiceError } from "../domain/service-errors.js";
import type { ImageRecord, MicrovmRecord, Owner, VersionRecord } from "../store/records.js";
import { microvmState } from "../lifecycle/microvm-states.js";
import { microvmCursor, type Store } from "../store/store.js";
import type { OperationHandlers, Services } from "./context.js";
import { imageArn, newMicrovmId, parseVersion } from "../domain/identifiers.js";
import { oncePerClientToken } from "./idempotency.js";
import { checkConnectors, EGRESS_CONNECTORS, INGRESS_CONNECTORS } from "./images.js";
import { DEFAULT_MAX_RESULTS, listResponse, listScope } from "./pagination.js";
import { resolveImage, resolveVersion } from "./resolve.js";

/**
 * MicroVMs: RunMicrovm, GetMicrovm, ListMicrovms, SuspendMicrovm, ResumeMicrovm,
 * TerminateMicrovm. Each records its intent (through the state table of
 * src/lifecycle/microvm-states.ts) and then hands the work to the engine.
 *
 *   RunMicrovm ─► choose the version ─► (transaction, once per clientToken) MicroVM STARTING (PENDING)
 *              ─► commit ─► engine.runMicrovm
 */

export const DEFAULT_MAXIMUM_DURATION_SECONDS = 28_800;

export function microvmDetail(services: Services, microvm: MicrovmRecord): GetMicrovmResponse {
  const c = microvm.config;
  return {
    egressNetworkConnectors: c.egressNetworkConnectors,
    endpoint: `https://${microvm.microvmId}.${services.endpointDomain}`,
    executionRoleArn: c.executionRoleArn,
    idlePolicy: c.idlePolicy,
    imageArn: imageArn(microvm, microvm.imageName),
    imageVersion: String(microvm.imageVersion),
    ingressNetworkConnectors: c.ingressNetworkConnectors,
    maximumDurationInSeconds: c.maximumDurationInSeconds,
    microvmId: microvm.microvmId,
    startedAt: microvm.startedAt,
    state: microvmState(microvm.state),
    stateReason: microvm.stateReason,
    terminatedAt: microvm.terminatedAt,
  };
}

export async function resolveMicrovm(store: Store, owner: Owner, microvmId: string): Promise<MicrovmRecord> {
  const microvm = await store.findMicrovm(owner, microvmId);
  if (!microvm) throw notFound("Microvm", microvmId, `MicroVM ${microvmId} does not exist.`);
  return microvm;
}

/**
 * The version a MicroVM runs: the one asked for, or the image's latest active
 * version. A version still building is accepted, and the MicroVM waits PENDING for
 * it; an INACTIVE or FAILED version cannot run.
 */
async function versionToRun(store: Store, image: ImageRecord, asked: string | undefined): Promise<VersionRecord> {
  if (asked !== undefined) {
    const version = await resolveVersion(store, image, asked);
    if (version.status === "INACTIVE") {
      throw conflict("MicrovmImageVersion", asked, `Version ${asked} of MicroVM image ${image.name} is INACTIVE.`);
    }
    if (version.state === "FAILED") {
      throw conflict(
        "MicrovmImageVersion",
        asked,
        `Version ${asked} of MicroVM image ${image.name} failed to build: ${version.stateReason?.replace(/\.$/, "") ?? "see its builds"}.`,
      );
    }
    return version;
  }
  if (image.latestActiveVersion !== undefined) return resolveVersion(store, image, String(image.latestActiveVersion));
  const newest = await store.newestVersionInStates(image.imageId, ["PENDING", "IN_PROGRESS"]);
  if (newest) return newest;
  throw conflict(
    "MicrovmImage",
    image.name,
    `MicroVM image ${image.name} has no ACTIVE version that built successfully; give imageVersion or update the image.`,
  );
}

export function microvmHandlers(services: Services): Pick<
  OperationHandlers,
  "RunMicrovm" | "GetMicrovm" | "ListMicrovms" | "SuspendMicrovm" | "ResumeMicrovm" | "TerminateMicrovm"
> {
  const { store, engine, lifecycle, paginator } = services;

  return {
    async RunMicrovm(input, { owner }) {
      const now = services.now();
      checkConnectors("ingressNetworkConnectors", input.ingressNetworkConnectors, INGRESS_CONNECTORS);
      checkConnectors("egressNetworkConnectors", input.egressNetworkConnectors, EGRESS_CONNECTORS);
      let started: MicrovmRecord | undefined;
      const { result } = await oncePerClientToken(store, owner, "RunMicrovm", input, now, async (tx) => {
        const image = await resolveImage(tx, owner, input.imageIdentifier);
        const version = await versionToRun(tx, image, input.imageVersion);
        const live = await tx.countLiveMicrovms({ owner });
        if (live >= services.limits.maxLiveMicrovms) {
          throw new ServiceError(
            "ServiceQuotaExceededException",
            `This account can have at most ${services.limits.maxLiveMicrovms} MicroVMs that are not terminated.`,
            { quotaCode: "L-MICROVMS-LIVE", serviceCode: "lambda", resourceType: "Microvm", resourceId: owner.accountId },
          );
        }
        const microvm: MicrovmRecord = {
          ...owner,
          microvmId: newMicrovmId(),
          imageId: image.imageId,
          imageName: image.name,
          imageVersion: version.version,
          state: "STARTING",
          config: {
            egressNetworkConnectors: input.egressNetworkConnectors ?? version.config.egressNetworkConnectors,
            ingressNetworkConnectors: input.ingressNetworkConnectors,
            executionRoleArn: input.executionRoleArn,
            idlePolicy: input.idlePolicy,
            logging: input.logging ?? version.config.logging,
            maximumDurationInSeconds: input.maximumDurationInSeconds ?? DEFAULT_MAXIMUM_DURATION_SECONDS,
            runHookPayload: input.runHookPayload,
          },
          createdAt: now,
          // MicrovmItem requires startedAt: it is when the MicroVM was asked to run.
          startedAt: now,
          updatedAt: now,
        };
        await tx.insertMicrovm(microvm);
        started = microvm;
        return microvmDetail(services, microvm);
      });
      if (started) engine.runMicrovm(started);
      return result;
    },

    async GetMicrovm(input, { owner }) {
      return microvmDetail(services, await resolveMicrovm(store, owner, input.microvmIdentifier));
    },

    async ListMicrovms(input, { owner }) {
      const image = input.imageIdentifier === undefined ? undefined : await resolveImage(store, owner, input.imageIdentifier);
      const imageVersion = input.imageVersion === undefined ? undefined : (parseVersion(input.imageVersion) ?? -1);
      const scope = listScope("ListMicrovms", owner.accountId, owner.region, image?.imageId, imageVersion);
      const page = await store.listMicrovms(owner, {
        imageId: image?.imageId,
        imageVersion,
        after: paginator.decode(scope, input.nextToken),
        limit: input.maxResults ?? DEFAULT_MAX_RESULTS,
      });
      return listResponse(paginator, scope, page, microvmCursor, (m) => ({
        imageArn: imageArn(m, m.imageName),
        imageVersion: String(m.imageVersion),
        microvmId: m.microvmId,
        startedAt: m.startedAt ?? m.createdAt,
        state: microvmState(m.state),
      }));
    },

    async SuspendMicrovm(input, { owner }) {
      const { microvm, moved } = await lifecycle.apply(await resolveMicrovm(store, owner, input.microvmIdentifier), "suspend");
      if (moved) engine.suspendMicrovm(microvm);
    },

    async ResumeMicrovm(input, { owner }) {
      const { microvm, moved } = await lifecycle.apply(await resolveMicrovm(store, owner, input.microvmIdentifier), "resume");
      if (moved) engine.resumeMicrovm(microvm);
    },

    async TerminateMicrovm(input, { owner }) {
      const { microvm, moved } = await lifecycle.apply(
        await resolveMicrovm(store, owner, input.microvmIdentifier),
        "terminate",
        { stateReason: "Terminated by TerminateMicrovm." },
      );
      if (moved) engine.terminateMicrovm(microvm);
    },
  };
}
