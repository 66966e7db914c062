// Regenerates config/defaults.json from the config loader's built-in defaults (run: node --import tsx bench/gen-defaults.ts).
import { writeFileSync } from 'node:fs';
import { loadConfig } from '../src/config/config.ts';

const c = loadConfig({ argv: [], env: {}, cwd: '/' });
writeFileSync(new URL('../config/defaults.json', import.meta.url), `${JSON.stringify({ ...c, node: { name: '<host name>' }, stateDir: '.tandem' }, null, 2)}\n`);
