// The operations dashboard against the real server: the API key gate, the
// live connection count as chat pages open and close, presence and kick;
// and demo sign-in refused when the server runs without --demo.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { API_KEY, connState, launchBrowser, screenshot, signIn, TernServer, until } from './harness';

let server: TernServer;
let browser: Browser;
let admin: Page;

beforeAll(async () => {
  server = new TernServer({ name: 'dashboard' });
  await server.start();
  browser = await launchBrowser();
  admin = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
});

afterAll(async () => {
  await browser?.close();
  await server?.dispose();
});

const connections = () => admin.textContent('#total-connections');

describe('operations dashboard', () => {
  it('asks for the API key and refuses a wrong one', async () => {
    const r = await fetch(`${server.base}/admin/stats`);
    expect(r.status).toBe(401);
    await admin.goto(`${server.base}/admin/`);
    await admin.fill('#api-key', 'not-the-key');
    await admin.click('#key-btn');
    await until(async () => ((await admin.textContent('#key-error')) ?? '').includes('refused'), true);
    await admin.fill('#api-key', API_KEY);
    await admin.click('#key-btn');
    await until(connections, '0');
    await until(async () => admin.getAttribute('#poll-state', 'data-state'), 'live');
  });

  it('counts connections as pages open and close, and the charts move', async () => {
    const carol = await browser.newContext();
    const dave = await browser.newContext();
    const carolPage = await carol.newPage();
    const davePage = await dave.newPage();
    await signIn(carolPage, server.base, 'carol');
    await until(connections, '1');
    await signIn(davePage, server.base, 'dave');
    await until(connections, '2');

    // Traffic shows in the rates.
    await carolPage.fill('#new-dm-user', 'dave');
    await carolPage.click('#new-dm-btn');
    for (let i = 0; i < 5; i++) {
      await carolPage.fill('#composer-input', `ping ${i}`);
      await carolPage.press('#composer-input', 'Enter');
    }
    await until(async () => Number((await admin.textContent('#total-in'))?.split(' ')[0]), 5);

    await davePage.close();
    await until(connections, '1');

    // Presence and kick.
    await admin.fill('#presence-user', 'carol');
    await admin.click('#presence-btn');
    await until(async () => admin.textContent('#presence-summary'), 'carol is online on 1 device');
    await admin.click('#kick-all');
    await until(() => connState(carolPage), 'stopped');
    await until(connections, '0');
    await until(async () => admin.textContent('#presence-summary'), 'carol is offline');
    expect(await admin.textContent('#presence-error')).toBe('kicked 1 connection');
    await screenshot(carolPage, 'app-kicked');
    await screenshot(admin, 'admin-dashboard');
    await carol.close();
    await dave.close();
  });
});

describe('without --demo', () => {
  it('refuses demo sign-in with the contract error body and offers token sign-in', async () => {
    const plain = new TernServer({ name: 'nodemo', demo: false });
    try {
      await plain.start();
      const r = await fetch(`${plain.base}/demo/session`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user: 'mallory' }),
      });
      expect(r.status).toBe(404);
      const body = (await r.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe('not_found');
      expect(body.error.message).toContain('--demo');
      const cfg = (await (await fetch(`${plain.base}/app/config.json`)).json()) as { demo: boolean; ws_port: number };
      expect(cfg).toEqual({ demo: false, ws_port: plain.wsPort, ws_path: '/ws' });
      const page = await browser.newPage();
      await page.goto(`${plain.base}/app/`);
      expect(await page.isVisible('#signin-token')).toBe(true);
      await page.close();
    } finally {
      await plain.dispose();
    }
  });
});
