// Keeps small JSON documents in the state directory, written atomically (temp file + rename).
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export class StateStore {
  readonly dir: string;
  #writes: Promise<void> = Promise.resolve();

  constructor(dir: string) {
    this.dir = dir;
  }

  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  /** The stored document, or undefined when there is none yet. A corrupt file is an error. */
  async load(name: string): Promise<unknown> {
    try {
      return JSON.parse(await readFile(join(this.dir, `${name}.json`), 'utf8')) as unknown;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new Error(`state file ${join(this.dir, `${name}.json`)} is unreadable: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Writes are queued so that the last one called is the one that stays. */
  save(name: string, value: unknown): Promise<void> {
    const file = join(this.dir, `${name}.json`);
    const text = `${JSON.stringify(value, null, 2)}\n`;
    const next = this.#writes.then(async () => {
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, text, 'utf8');
      await rename(tmp, file);
    });
    this.#writes = next.catch(() => undefined);
    return next;
  }

  async close(): Promise<void> {
    await this.#writes;
  }
}
