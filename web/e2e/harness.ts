// The browser tests' harness: the real `tern serve --demo` binary on free
// ports with a temp data dir, and Debian's Chromium driven by playwright-core.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { expect } from 'vitest';

export const ARTIFACTS = path.resolve(import.meta.dirname, '..', 'test-artifacts');
export const API_KEY = 'e2e-api-key-0123456789';
/** How long the server may take to answer /healthz after spawn. */
const START_TIMEOUT_MS = 20_000;
/** How long SIGTERM may take before SIGKILL. */
const STOP_TIMEOUT_MS = 15_000;
/** Default wait for something to show up in a page. */
export const UI_TIMEOUT_MS = 15_000;

/** The server binary: $TERN_BIN, else the release build in $CARGO_TARGET_DIR (or the Makefile's default). */
export function ternBin(): string {
  const bin =
    process.env.TERN_BIN ??
    path.join(process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache', 'tern-target'), 'release', 'tern');
  if (!existsSync(bin)) throw new Error(`no tern binary at ${bin}: run \`make build\` or set TERN_BIN`);
  return bin;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface ServerOptions {
  demo?: boolean;
  name: string;
}

/** One `tern serve` process; `stop` then `start` again keeps ports and data (a restart). */
export class TernServer {
  readonly dataDir = mkdtempSync(path.join(os.tmpdir(), 'tern-e2e-'));
  wsPort = 0;
  httpPort = 0;
  private proc: ChildProcess | null = null;
  private starts = 0;

  constructor(private opts: ServerOptions) {}

  get base(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  async start(): Promise<void> {
    if (!this.httpPort) {
      this.wsPort = await freePort();
      this.httpPort = await freePort();
    }
    mkdirSync(ARTIFACTS, { recursive: true });
    const log = createWriteStream(path.join(ARTIFACTS, `${this.opts.name}-server-${this.starts++}.log`));
    const args = [
      'serve',
      '--data-dir', this.dataDir,
      '--ws-addr', `127.0.0.1:${this.wsPort}`,
      '--http-addr', `127.0.0.1:${this.httpPort}`,
      '--api-key', API_KEY,
      '--shards', '2',
      '--no-pin',
      ...(this.opts.demo === false ? [] : ['--demo']),
    ];
    const proc = spawn(ternBin(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stdout?.pipe(log);
    proc.stderr?.pipe(log);
    this.proc = proc;
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) throw new Error(`tern exited with ${proc.exitCode}; see ${log.path}`);
      try {
        const r = await fetch(`${this.base}/healthz`);
        if (r.ok) return;
      } catch {
        /* not yet */
      }
      await sleep(100);
    }
    throw new Error('tern did not become healthy in time');
  }

  /** SIGTERM and wait for a clean exit (SIGKILL after the timeout). */
  async stop(): Promise<number | null> {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return proc?.exitCode ?? null;
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
    const code = await exited;
    clearTimeout(timer);
    return code;
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Headless Debian Chromium; each launch gets a fresh temporary profile (user data dir) from Playwright. */
export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    headless: true,
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

/** Wait until `fn` returns `want` (vitest's polling expect). */
export async function until<T>(fn: () => Promise<T>, want: T, timeout = UI_TIMEOUT_MS): Promise<void> {
  await expect.poll(fn, { timeout, interval: 100 }).toEqual(want);
}

// ---- chat page helpers ----

export async function signIn(page: Page, base: string, user: string): Promise<void> {
  await page.goto(`${base}/app/`);
  await page.fill('#signin-user', user);
  await page.click('#signin-btn');
  await waitOnline(page);
}

export async function waitOnline(page: Page): Promise<void> {
  await page.waitForSelector('#conn-state[data-state="online"]', { timeout: UI_TIMEOUT_MS });
}

export function connState(page: Page): Promise<string | null> {
  return page.getAttribute('#conn-state', 'data-state');
}

export async function openDm(page: Page, peer: string): Promise<void> {
  await page.fill('#new-dm-user', peer);
  await page.click('#new-dm-btn');
}

export async function openConv(page: Page, conv: string): Promise<void> {
  await page.click(`#conv-list li[data-conv="${conv}"]`, { timeout: UI_TIMEOUT_MS });
  await page.waitForSelector(`#messages[data-conv="${conv}"]`);
}

export async function sendText(page: Page, text: string): Promise<void> {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

/** Stored (not pending) messages with exactly this text in the open conversation. */
export function messages(page: Page, text: string): Locator {
  return page.locator('#messages li.msg:not(.pending) .text').filter({ hasText: new RegExp(`^${escapeRe(text)}$`) });
}

/** Texts of the stored messages shown in the open conversation. */
export async function shownTexts(page: Page): Promise<string[]> {
  return page.locator('#messages li.msg:not(.pending) .text').allTextContents();
}

export async function unreadOf(page: Page, conv: string): Promise<string> {
  const badge = page.locator(`#conv-list li[data-conv="${conv}"] .unread`);
  if ((await badge.count()) === 0 || (await badge.isHidden())) return '0';
  return (await badge.textContent()) ?? '0';
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
