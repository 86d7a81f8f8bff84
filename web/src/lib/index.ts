// Tern's TypeScript client library: lift this folder into any web app.
export * from './protocol';
export * from './seqs';
export * from './backoff';
export * from './client';
export { Emitter } from './emitter';
