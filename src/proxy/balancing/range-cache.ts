// Parses each requested semver range once and keeps the parsed Range (semver's satisfies() re-parses every call).
import semver from 'semver';
import { BadRangeError } from '../errors.ts';

export class RangeCache {
  #ranges = new Map<string, semver.Range>();
  #max: number;

  constructor(max = 1000) {
    this.#max = max;
  }

  /** The parsed range; throws BadRangeError for anything semver cannot parse. */
  get(raw: string): semver.Range {
    let r = this.#ranges.get(raw);
    if (r) return r;
    if (raw.length > 256 || semver.validRange(raw) === null) throw new BadRangeError(raw.slice(0, 256));
    r = new semver.Range(raw);
    // Bounded: a client sending endless distinct ranges must not grow memory without limit.
    if (this.#ranges.size >= this.#max) this.#ranges.clear();
    this.#ranges.set(raw, r);
    return r;
  }
}
