// The marks that say "this catalog instance is a Tandem sidecar's control API": only the sidecar's own registration may carry them.
/** The catalog name every sidecar registers itself under. */
export const SIDECAR_SERVICE = 'tandem';
/** The tag on every sidecar's own registration. */
export const SIDECAR_TAG = 'tandem-sidecar';
/** A Meta key that marks a control API as well (an operator may register one by hand with it). */
export const SIDECAR_META_KEY = 'tandem_api';

/** True when a catalog instance says it is a sidecar's control API: the proxy never routes to it. */
export function isSidecarMarked(tags: readonly string[], meta: Readonly<Record<string, string>>): boolean {
  return tags.includes(SIDECAR_TAG) || Object.hasOwn(meta, SIDECAR_META_KEY);
}

/**
 * Why an app's service may not be registered through Tandem, or undefined. An app could otherwise
 * dress itself up as a sidecar (confusing operators and the proxy's guard alike), and the `tandem_`
 * Meta namespace is the sidecar's: it writes `tandem_node` and `tandem_sidecar` itself.
 */
export function sidecarMarkProblem(spec: { name: string; tags?: readonly string[] | undefined; meta?: Readonly<Record<string, string>> | undefined }): string | undefined {
  if (spec.name === SIDECAR_SERVICE) return `the service name '${SIDECAR_SERVICE}' is reserved for the Tandem sidecars themselves`;
  if (spec.tags?.includes(SIDECAR_TAG)) return `the tag '${SIDECAR_TAG}' is reserved for the Tandem sidecars' own registrations`;
  const key = Object.keys(spec.meta ?? {}).find((k) => k.startsWith('tandem_'));
  if (key !== undefined) return `the Meta key '${key}' is reserved: keys starting with 'tandem_' are written by the sidecar`;
  return undefined;
}
