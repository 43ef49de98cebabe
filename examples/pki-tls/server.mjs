// A Node https server whose certificate follows the PKI secret `tls` on
// vaultlet's socket: swapped live with setSecureContext() on every re-issue,
// no restart, no dropped connection. Run: node server.mjs
import https from 'node:https';
import { serveTls } from 'vaultlet';

const server = https.createServer({}, (req, res) => res.end('ok\n'));
const serving = await serveTls(server, 'tls', {
  socket: process.env.VAULTLET_SOCKET || '/run/vaultlet/vaultlet.sock',
  secureContext: { minVersion: 'TLSv1.3' },
  onUpdate: (s) => console.log(`certificate ${s.data.serial_number} until ${s.data.expiration} (version ${s.version})`),
});
server.listen(Number(process.env.PORT || 8444), () => console.log(`listening, certificate version ${serving.version}`));
process.on('SIGTERM', () => {
  serving.close();
  server.close();
});
