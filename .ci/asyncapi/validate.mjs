// Validates an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser):
// the document against the AsyncAPI 3.0 schema and the project's rules, its $refs resolved
// (docs/asyncapi.yaml points at docs/schema/edge.v1.schema.json). Exits 1 on any error.
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node validate.mjs ASYNCAPI.yaml');
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const names = { 0: 'error', 1: 'warning', 2: 'info', 3: 'hint' };
for (const d of diagnostics) {
  if (d.severity <= DiagnosticSeverity.Warning) {
    console.error(`${path}: ${names[d.severity]} at /${d.path.join('/')}: ${d.message}`);
  }
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
if (!document || errors.length > 0) {
  console.error(`${path}: ${errors.length} error(s); not a valid AsyncAPI document`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
console.log(`${path}: valid AsyncAPI ${document.version()}, ${channels.length} channels: ${channels.join(', ')}`);
