import assert from "node:assert/strict";
import { createPrivateKey, generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { connect, createServer } from "node:tls";
import forge from "node-forge";
import {
  CA_CERT_FILE,
  CA_KEY_FILE,
  endpointCertificateNames,
  issueServerCertificate,
  loadOrCreateAuthority,
} from "../../src/tls/certificate-authority.js";

const dirs: string[] = [];
function freshDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "microvms-ca-test-"));
  dirs.push(dir);
  return join(dir, "tls"); // not there yet: loadOrCreateAuthority makes it
}
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

const DAY_MS = 24 * 3600 * 1000;
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

describe("the local CA", () => {
  test("is created once, with its key readable by its owner only, and reused on the next load", async () => {
    const dir = freshDir();
    const first = await loadOrCreateAuthority(dir);
    assert.equal(first.certPath, join(dir, CA_CERT_FILE));
    assert.equal(readFileSync(join(dir, CA_CERT_FILE), "utf8"), first.caCertPem);
    assert.equal(readFileSync(join(dir, CA_KEY_FILE), "utf8"), first.caKeyPem);
    assert.equal(statSync(join(dir, CA_KEY_FILE)).mode & 0o777, 0o600);

    const second = await loadOrCreateAuthority(dir);
    assert.deepEqual(second, first);
  });

  test("is a CA for ten years, named after the host, limited to loopback names", async () => {
    const now = new Date("2030-06-01T00:00:00Z");
    const { caCertPem } = await loadOrCreateAuthority(freshDir(), now);
    const cert = new X509Certificate(caCertPem);
    assert.equal(cert.ca, true);
    assert.match(cert.subject, /CN=microvms local CA \(.+\)/);
    assert.equal(cert.subject, cert.issuer);
    assert.ok(cert.verify(cert.publicKey), "self-signed");
    const years = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / (365 * DAY_MS);
    assert.ok(years >= 10 && years < 10.1, `valid for ${years} years`);
    assert.ok(Date.parse(cert.validFrom) <= now.getTime());

    const parsed = forge.pki.certificateFromPem(caCertPem);
    const usage = parsed.getExtension("keyUsage") as { keyCertSign: boolean; cRLSign: boolean; digitalSignature: boolean; critical: boolean };
    assert.deepEqual([usage.keyCertSign, usage.cRLSign, usage.digitalSignature, usage.critical], [true, true, false, true]);
    const nameConstraints = parsed.extensions.find((e: { id: string }) => e.id === "2.5.29.30") as { critical: boolean } | undefined;
    assert.equal(nameConstraints?.critical, true, "a critical nameConstraints extension");
  });

  test("loads that race on a fresh directory all get the same CA", async () => {
    const dir = freshDir();
    const loads = await Promise.all([1, 2, 3, 4].map(() => loadOrCreateAuthority(dir)));
    for (const ca of loads) assert.deepEqual(ca, loads[0]);
    assert.equal(readFileSync(join(dir, CA_CERT_FILE), "utf8"), loads[0]!.caCertPem);
  });

  test("a key whose certificate was lost gets a new certificate with the same key", async () => {
    const dir = freshDir();
    const first = await loadOrCreateAuthority(dir);
    unlinkSync(join(dir, CA_CERT_FILE));
    const second = await loadOrCreateAuthority(dir);
    assert.equal(second.caKeyPem, first.caKeyPem);
    assert.notEqual(second.caCertPem, first.caCertPem);
    // A leaf signed now verifies against the certificate clients already trust.
    const leaf = await issueServerCertificate(second, ["localhost"]);
    assert.ok(new X509Certificate(leaf.certPem).checkIssued(new X509Certificate(first.caCertPem)));
  });

  test("a certificate that does not belong to the key is refused, not replaced", async () => {
    const dir = freshDir();
    await loadOrCreateAuthority(dir);
    const other = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }) as string;
    writeFileSync(join(dir, CA_KEY_FILE), other, { mode: 0o600 });
    await assert.rejects(loadOrCreateAuthority(dir), /was not made with .*ca-key\.pem; remove both/);
  });
});

describe("the server certificate", () => {
  test("names every endpoint, localhost and the loopback addresses, for serving only, signed by the CA", async () => {
    const ca = await loadOrCreateAuthority(freshDir());
    const now = new Date();
    const { certPem, keyPem } = await issueServerCertificate(ca, endpointCertificateNames("microvms.localhost"), now);
    const cert = new X509Certificate(certPem);
    assert.equal(cert.subjectAltName, "DNS:*.microvms.localhost, DNS:microvms.localhost, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1");
    assert.equal(cert.ca, false);
    assert.deepEqual(cert.keyUsage, [SERVER_AUTH]);
    assert.ok(cert.checkIssued(new X509Certificate(ca.caCertPem)));
    assert.ok(cert.verify(new X509Certificate(ca.caCertPem).publicKey));
    assert.ok(cert.checkPrivateKey(createPrivateKey(keyPem)));
    assert.ok(Date.parse(cert.validTo) - Date.parse(cert.validFrom) <= 397 * DAY_MS, "browsers refuse longer-lived leaves");
    assert.ok(Date.parse(cert.validFrom) <= now.getTime() && now.getTime() < Date.parse(cert.validTo));
    assert.equal(cert.checkHost("mvm-0123456789abcdef0.microvms.localhost"), "*.microvms.localhost");
    assert.equal(cert.checkIP("127.0.0.1"), "127.0.0.1");
  });

  test("each issue has its own key", async () => {
    const ca = await loadOrCreateAuthority(freshDir());
    const [a, b] = await Promise.all([issueServerCertificate(ca, ["localhost"]), issueServerCertificate(ca, ["localhost"])]);
    assert.notEqual(a!.keyPem, b!.keyPem);
  });

  test("is not issued for a name outside loopback", async () => {
    const ca = await loadOrCreateAuthority(freshDir());
    await assert.rejects(issueServerCertificate(ca, ["example.com"]), /only names under localhost, not example\.com/);
    await assert.rejects(issueServerCertificate(ca, ["localhost", "10.0.0.1"]), /only loopback addresses, not 10\.0\.0\.1/);
    await assert.rejects(issueServerCertificate(ca, []), /at least one name/);
  });

  test("a certificate for another name, signed with the CA's key anyway, does not verify: the CA is constrained", async () => {
    const ca = await loadOrCreateAuthority(freshDir());
    const forged = signWithCaKey(ca.caCertPem, ca.caKeyPem, "example.com");
    const server = createServer({ cert: forged.certPem, key: forged.keyPem });
    server.on("tlsClientError", () => undefined);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const error = await new Promise<Error & { code?: string }>((resolve, reject) => {
        const socket = connect({ host: "127.0.0.1", port: (server.address() as AddressInfo).port, servername: "example.com", ca: ca.caCertPem }, () =>
          reject(new Error("the forged certificate verified")),
        );
        socket.on("error", resolve);
      });
      // OpenSSL's X509_V_ERR_PERMITTED_VIOLATION, which Node has no code for.
      assert.match(error.message, /permitted subtree violation/);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

/** What someone holding the CA's key could sign, bypassing issueServerCertificate's checks. */
function signWithCaKey(caCertPem: string, caKeyPem: string, name: string): { certPem: string; keyPem: string } {
  const caCert = forge.pki.certificateFromPem(caCertPem);
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey.export({ type: "spki", format: "pem" }) as string);
  cert.serialNumber = "01";
  cert.validity.notBefore = new Date(Date.now() - 3600_000);
  cert.validity.notAfter = new Date(Date.now() + DAY_MS);
  cert.setSubject([{ name: "commonName", value: name }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([{ name: "subjectAltName", altNames: [{ type: 2, value: name }] }]);
  cert.sign(forge.pki.privateKeyFromPem(caKeyPem), forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string };
}
