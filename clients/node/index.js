// ESM entry: the implementation is index.cjs (one copy for both module systems).
import vaultlet from './index.cjs';

export const { DEFAULT_SOCKET, VaultletError, getSecret, loadSecrets, waitUntilReady, watch, createPgPool, reportRejected, serveTls, tlsContextOf } =
  vaultlet;
export default vaultlet;
