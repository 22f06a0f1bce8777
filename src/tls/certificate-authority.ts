import { generateKeyPair, randomBytes, X509Certificate, createPrivateKey } from "node:crypto";
import { link, mkdir, open, readFile, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { BlockList, isIP } from "node:net";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import forge from "node-forge";

/**
 * The local certificate authority behind `https://{microvmId}.microvms.localhost`.
 *
 *   <dataDir>/tls/ca-key.pem (0600) ─► <dataDir>/tls/ca.pem ─► `microvms ca` prints it; clients trust it
 *                │                                     (curl --cacert, NODE_EXTRA_CA_CERTS, AWS_CA_BUNDLE)
 *                └─► signs the proxy's leaf certificate, issued afresh at each start and kept in memory
 *
 * The CA is made once and then reused, so a client trusts it once. Both files are installed
 * with link(2), which never replaces: when `serve` and `microvms ca` race on a fresh data
 * directory, one key and one certificate win and everyone reads those (a rename would let the
 * loser overwrite the winner's key after the winner had paired a certificate with it).
 *
 * The CA may only vouch for loopback names (a critical nameConstraints extension): its key sits
 * unencrypted on disk and users are told to trust it, so a stolen key must not be able to
 * impersonate any other site.
 *
 * RSA-2048, because node-forge, which writes the certificates, signs with RSA only. Keys come
 * from Node's asynchronous generateKeyPair (the thread pool), not from forge's pure-JS generator,
 * which would block the event loop for a second or more.
 */

export interface CertificateAuthority {
  caCertPem: string;
  caKeyPem: string;
  /** Where the CA certificate is, for telling clients to trust it. */
  certPath: string;
}

export interface ServerCertificate {
  certPem: string;
  keyPem: string;
}

export const CA_CERT_FILE = "ca.pem";
export const CA_KEY_FILE = "ca-key.pem";

/** Where a data directory keeps its CA. */
export const authorityDir = (dataDir: string): string => join(dataDir, "tls");

/** The names the endpoint proxy answers to: every MicroVM's endpoint, and loopback by name and address. */
export function endpointCertificateNames(domain: string): string[] {
  return [`*.${domain}`, domain, "localhost", "127.0.0.1", "::1"];
}

const DAY_MS = 24 * 3600 * 1000;
const CA_VALIDITY_MS = 10 * 365 * DAY_MS;
/** Browsers refuse leaf certificates valid for more than 398 days. */
const LEAF_VALIDITY_MS = 397 * DAY_MS;
/** Backdating tolerates a client whose clock is a little behind ours. */
const BACKDATE_MS = 3600 * 1000;

/** What the nameConstraints extension permits, and issueServerCertificate checks. */
const PERMITTED_DNS = "localhost"; // the name and every name under it
const loopback = new BlockList();
loopback.addSubnet("127.0.0.0", 8, "ipv4");
loopback.addAddress("::1", "ipv6");
/** The same two subnets as nameConstraints writes them: address octets, then mask octets. */
const PERMITTED_IP_SUBTREES = ["7f000000" + "ff000000", "00".repeat(15) + "01" + "ff".repeat(16)];

/** Loads the CA kept in `dir`, creating what is missing of it. */
export async function loadOrCreateAuthority(dir: string, now: Date = new Date()): Promise<CertificateAuthority> {
  await mkdir(dirname(dir), { recursive: true });
  await mkdir(dir, { recursive: true, mode: 0o700 }); // only this directory is private; the data directory keeps its mode
  const keyPath = join(dir, CA_KEY_FILE);
  const certPath = join(dir, CA_CERT_FILE);
  const caKeyPem = (await readIfExists(keyPath)) ?? (await install(keyPath, (await newRsaKey()).keyPem, 0o600));
  // A key without a certificate (a crash between the two, or a deleted ca.pem) gets a new
  // certificate with the same key and subject, which verifies what the old one did.
  const caCertPem = (await readIfExists(certPath)) ?? (await install(certPath, selfSignAuthority(caKeyPem, now), 0o644));

  const cert = new X509Certificate(caCertPem);
  if (!cert.checkPrivateKey(createPrivateKey(caKeyPem))) {
    throw new Error(`${certPath} was not made with ${keyPath}; remove both to create a new CA (clients must then trust the new one)`);
  }
  if (!cert.ca) throw new Error(`${certPath} is not a CA certificate; remove it and ${keyPath} to create a new CA`);
  if (new Date(cert.validTo).getTime() <= now.getTime()) {
    throw new Error(`the CA in ${certPath} expired on ${cert.validTo}; remove it and ${keyPath} to create a new CA`);
  }
  return { caCertPem, caKeyPem, certPath };
}

/**
 * A certificate for the given DNS names and IP addresses (each a subject alternative name),
 * with a new key, signed by the CA. Every name must be a loopback name: the CA may sign no other.
 */
export async function issueServerCertificate(ca: CertificateAuthority, names: string[], now: Date = new Date()): Promise<ServerCertificate> {
  if (names.length === 0) throw new Error("a server certificate needs at least one name");
  const altNames = names.map((name) => {
    const family = isIP(name);
    if (family === 0) {
      const dns = name.toLowerCase();
      if (dns !== PERMITTED_DNS && !dns.endsWith(`.${PERMITTED_DNS}`)) throw new Error(`the local CA signs only names under ${PERMITTED_DNS}, not ${name}`);
      return { type: 2, value: dns };
    }
    // No IPv4-mapped IPv6 (::ffff:127.0.0.1): forge would take its dots for an IPv4 address.
    if (name.includes(":") && name.includes(".")) throw new Error(`write ${name} as an IPv4 address`);
    if (!loopback.check(name, family === 4 ? "ipv4" : "ipv6")) throw new Error(`the local CA signs only loopback addresses, not ${name}`);
    return { type: 7, ip: name };
  });

  const caCert = forge.pki.certificateFromPem(ca.caCertPem);
  const notAfter = Math.min(now.getTime() - BACKDATE_MS + LEAF_VALIDITY_MS, caCert.validity.notAfter.getTime());
  const { keyPem, publicKeyPem } = await newRsaKey();
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKeyPem);
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = new Date(now.getTime() - BACKDATE_MS);
  cert.validity.notAfter = new Date(notAfter);
  cert.setSubject([{ name: "organizationName", value: "microvms" }, { name: "commonName", value: names[0] }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", serverAuth: true },
    { name: "subjectAltName", altNames },
    { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(ca.caKeyPem), forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem };
}

function selfSignAuthority(keyPem: string, now: Date): string {
  const key = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = new Date(now.getTime() - BACKDATE_MS);
  cert.validity.notAfter = new Date(now.getTime() - BACKDATE_MS + CA_VALIDITY_MS);
  const subject = [
    { name: "organizationName", value: "microvms" },
    { name: "commonName", value: `microvms local CA (${hostname()})` },
  ];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, pathLenConstraint: 0, critical: true },
    { name: "keyUsage", keyCertSign: true, cRLSign: true, critical: true },
    { id: "2.5.29.30", critical: true, value: loopbackNameConstraints() },
    { name: "subjectKeyIdentifier" },
  ]);
  cert.sign(key, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

/**
 * NameConstraints (RFC 5280 §4.2.1.10) permitting `localhost` and the names under it,
 * 127.0.0.0/8 and ::1. With an IP subtree present, a leaf's IP names are constrained too.
 */
function loopbackNameConstraints(): forge.asn1.Asn1 {
  const { asn1 } = forge;
  const subtree = (tag: number, value: string) =>
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [asn1.create(asn1.Class.CONTEXT_SPECIFIC, tag, false, value)]);
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    // permittedSubtrees [0]: a dNSName [2], then iPAddress [7] subtrees
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [
      subtree(2, PERMITTED_DNS),
      ...PERMITTED_IP_SUBTREES.map((hex) => subtree(7, forge.util.hexToBytes(hex))),
    ]),
  ]);
}

/** A positive serial number of 128 random bits (RFC 5280 asks for at most 20 octets, positive). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0]! &= 0x7f;
  bytes[0]! |= 0x01; // no leading zero octet, which DER would reject
  return bytes.toString("hex");
}

const generateRsa = promisify(generateKeyPair);

async function newRsaKey(): Promise<{ keyPem: string; publicKeyPem: string }> {
  const { privateKey, publicKey } = await generateRsa("rsa", {
    modulusLength: 2048,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  return { keyPem: privateKey, publicKeyPem: publicKey };
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/**
 * Writes `content` to `path` unless something is there already, atomically: a complete
 * temporary file is linked into place, or not at all. Returns what `path` then holds.
 */
async function install(path: string, content: string, mode: number): Promise<string> {
  const temporary = `${path}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  const file = await open(temporary, "wx", mode);
  try {
    try {
      await file.writeFile(content);
      await file.sync();
    } finally {
      await file.close();
    }
    await link(temporary, path);
    return content;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    return readFile(path, "utf8"); // another process installed its own first
  } finally {
    await unlink(temporary).catch(() => undefined);
  }
}
