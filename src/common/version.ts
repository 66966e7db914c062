// Tandem's own version, read once from package.json (the same file in src/ and dist/ layouts).
import { readFileSync } from 'node:fs';

export const TANDEM_VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
