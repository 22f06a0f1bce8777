import { Command } from "commander";
import { resolveConfig } from "../config/config.js";
import { authorityDir, loadOrCreateAuthority } from "../tls/certificate-authority.js";

/** `microvms ca`: the certificate of the local CA that signs the endpoints' HTTPS certificate, for clients to trust. */

export function caCommand(): Command {
  return new Command("ca")
    .description("Print the certificate of the CA that signs https://{microvmId}.microvms.localhost (creating it if there is none yet)")
    .option("--data-dir <dir>", "data directory (MICROVMS_DATA_DIR)")
    .action(async (flags: { dataDir?: string }) => {
      const { dataDir } = resolveConfig({ dataDir: flags.dataDir });
      const { caCertPem, certPath } = await loadOrCreateAuthority(authorityDir(dataDir));
      process.stdout.write(caCertPem);
      process.stderr.write(`trust it with: curl --cacert ${certPath}, NODE_EXTRA_CA_CERTS=${certPath}, or AWS_CA_BUNDLE=${certPath}\n`);
    });
}
