// Copy a fresh Vite build (.build-tmp) into dist/www, touching only files
// whose bytes changed and removing stale ones. The gateway's build script
// watches dist/: an unchanged build must not make cargo rebuild the binary.
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');
const from = path.join(root, '.build-tmp');
const to = path.join(root, 'dist', 'www');

function files(dir, base = dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    return statSync(p).isDirectory() ? files(p, base) : [path.relative(base, p)];
  });
}

const fresh = new Set(files(from));
let changed = 0;
for (const rel of fresh) {
  const src = path.join(from, rel);
  const dst = path.join(to, rel);
  if (existsSync(dst) && readFileSync(dst).equals(readFileSync(src))) continue;
  mkdirSync(path.dirname(dst), { recursive: true });
  cpSync(src, dst);
  changed++;
}
for (const rel of files(to)) {
  if (!fresh.has(rel)) {
    rmSync(path.join(to, rel));
    changed++;
  }
}
rmSync(from, { recursive: true, force: true });
console.log(`dist/www: ${fresh.size} files, ${changed} changed`);
