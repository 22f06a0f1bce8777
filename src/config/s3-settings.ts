/** Where S3 code artifacts come from; the server's, not the caller's. */
export interface S3Settings {
  /** An S3-compatible endpoint such as http://127.0.0.1:4569; AWS's endpoint for `region` when absent. */
  endpoint?: string;
  region: string;
  /** http://endpoint/bucket/key rather than http://bucket.endpoint/key; what most S3-compatible stores need. */
  forcePathStyle: boolean;
  /** The AWS SDK's default credential chain (environment, profile, instance role) when absent. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
}

type Env = Record<string, string | undefined>;

/**
 * Reads MICROVMS_S3_ENDPOINT, MICROVMS_S3_REGION (else AWS_REGION, AWS_DEFAULT_REGION, us-east-1),
 * MICROVMS_S3_FORCE_PATH_STYLE (true by default when an endpoint is set) and
 * MICROVMS_S3_ACCESS_KEY_ID / MICROVMS_S3_SECRET_ACCESS_KEY / MICROVMS_S3_SESSION_TOKEN. Throws on
 * a setting that cannot work, without repeating values that may hold secrets.
 */
export function s3SettingsFromEnv(env: Env = process.env): S3Settings {
  const value = (name: string) => {
    const text = env[name]?.trim();
    return text === "" ? undefined : text;
  };
  const endpoint = value("MICROVMS_S3_ENDPOINT");
  if (endpoint !== undefined) {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      throw new Error("MICROVMS_S3_ENDPOINT must be an http:// or https:// URL");
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new Error("MICROVMS_S3_ENDPOINT must be an http:// or https:// URL");
    }
    if (url.username !== "" || url.password !== "") {
      throw new Error("MICROVMS_S3_ENDPOINT must not hold credentials; set MICROVMS_S3_ACCESS_KEY_ID and MICROVMS_S3_SECRET_ACCESS_KEY");
    }
  }
  const region = value("MICROVMS_S3_REGION") ?? value("AWS_REGION") ?? value("AWS_DEFAULT_REGION") ?? "us-east-1";

  const pathStyle = value("MICROVMS_S3_FORCE_PATH_STYLE")?.toLowerCase();
  let forcePathStyle: boolean;
  if (pathStyle === undefined) forcePathStyle = endpoint !== undefined;
  else if (pathStyle === "true" || pathStyle === "1") forcePathStyle = true;
  else if (pathStyle === "false" || pathStyle === "0") forcePathStyle = false;
  else throw new Error(`MICROVMS_S3_FORCE_PATH_STYLE must be true or false, got '${pathStyle}'`);

  const accessKeyId = value("MICROVMS_S3_ACCESS_KEY_ID");
  const secretAccessKey = value("MICROVMS_S3_SECRET_ACCESS_KEY");
  const sessionToken = value("MICROVMS_S3_SESSION_TOKEN");
  if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
    throw new Error("MICROVMS_S3_ACCESS_KEY_ID and MICROVMS_S3_SECRET_ACCESS_KEY must be set together");
  }
  if (sessionToken !== undefined && accessKeyId === undefined) {
    throw new Error("MICROVMS_S3_SESSION_TOKEN needs MICROVMS_S3_ACCESS_KEY_ID and MICROVMS_S3_SECRET_ACCESS_KEY");
  }

  const settings: S3Settings = { region, forcePathStyle };
  if (endpoint !== undefined) settings.endpoint = endpoint;
  if (accessKeyId !== undefined && secretAccessKey !== undefined) {
    settings.credentials = { accessKeyId, secretAccessKey, ...(sessionToken === undefined ? {} : { sessionToken }) };
  }
  return settings;
}
