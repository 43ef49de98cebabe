// Types for the vaultlet Node.js client, import entry (index.js). The declarations
// live in index.d.cts, next to the implementation (index.cjs).
export * from './index.cjs';
import * as vaultlet from './index.cjs';
export default vaultlet;
