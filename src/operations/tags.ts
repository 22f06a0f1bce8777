import { invalidParameter, notFound, validation, type ServiceError } from "../domain/service-errors.js";
import type { Owner } from "../store/records.js";
import type { OperationHandlers, Services } from "./context.js";
import { parseImageArn } from "../domain/identifiers.js";

/**
 * Lambda's tag API (/2017-03-31/tags/{ARN}), which MicroVM images share with
 * Lambda: TagResource, UntagResource, ListTags. Lambda's rules apply: at most 50
 * tags per resource, and the `aws:` prefix is reserved.
 */

export const MAX_TAGS = 50;

/** Lambda's tag rules, reported with the error type of the calling operation. */
export function checkTags(
  tags: Record<string, string>,
  field: string,
  errorType: "ValidationException" | "InvalidParameterValueException",
): void {
  const fail = (message: string): ServiceError =>
    errorType === "ValidationException" ? validation(message) : invalidParameter(message);
  const reserved = Object.keys(tags).find((k) => k.toLowerCase().startsWith("aws:"));
  if (reserved !== undefined) throw fail(`Tag key '${reserved}' at '${field}' uses the reserved prefix 'aws:'.`);
  if (Object.keys(tags).length > MAX_TAGS) {
    throw fail(`A resource can have at most ${MAX_TAGS} tags; '${field}' would give it ${Object.keys(tags).length}.`);
  }
}

function imageNameOfTaggable(owner: Owner, arn: string): string {
  const parsed = parseImageArn(arn);
  if (!parsed || parsed.accountId !== owner.accountId || parsed.region !== owner.region) {
    throw notFound("MicrovmImage", arn, `Resource ${arn} does not exist.`);
  }
  return parsed.name;
}

export function tagHandlers(services: Services): Pick<OperationHandlers, "TagResource" | "UntagResource" | "ListTags"> {
  const { store } = services;

  async function taggedImage(tx: typeof store, owner: Owner, arn: string) {
    const image = await tx.findImage(owner, imageNameOfTaggable(owner, arn));
    if (!image) throw notFound("MicrovmImage", arn, `Resource ${arn} does not exist.`);
    return image;
  }

  return {
    async TagResource(input, { owner }) {
      await store.transaction(async (tx) => {
        const image = await taggedImage(tx, owner, input.Resource);
        const tags = { ...image.tags, ...input.Tags };
        checkTags(tags, "Tags", "InvalidParameterValueException");
        await tx.updateImage(image.imageId, { tags, updatedAt: image.updatedAt });
      });
    },

    async UntagResource(input, { owner }) {
      await store.transaction(async (tx) => {
        const image = await taggedImage(tx, owner, input.Resource);
        const tags = { ...image.tags };
        for (const key of input.TagKeys) delete tags[key];
        await tx.updateImage(image.imageId, { tags, updatedAt: image.updatedAt });
      });
    },

    async ListTags(input, { owner }) {
      const image = await taggedImage(store, owner, input.Resource);
      return { Tags: image.tags };
    },
  };
}
