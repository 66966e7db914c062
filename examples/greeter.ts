// Example app: a greeter that joins the cluster through the local sidecar. Run two versions side by side:
//   node --import tsx examples/greeter.ts 1.0.0   and   node --import tsx examples/greeter.ts 2.0.0
// An optional second argument is the sidecar's control API (else TANDEM_API, else http://127.0.0.1:7701).
// It is the greeter `tandem dev` runs (one copy, shipped with the CLI): read src/cli/dev-greeter.ts for the SDK calls.
import '../src/cli/dev-greeter.ts';
