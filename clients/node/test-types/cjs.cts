// Compiled (not run) by `npm run typecheck`: the CommonJS types resolve too.
import vaultlet = require('vaultlet');
import type { Secret } from 'vaultlet';

async function main(): Promise<void> {
  const s: Secret = await vaultlet.getSecret('api');
  const all: Record<string, Record<string, string>> = await vaultlet.loadSecrets();
  const e = new vaultlet.VaultletError('TIMEOUT', 'x');
  void [s.version, all, e.code, vaultlet.DEFAULT_SOCKET];
}
void main;
