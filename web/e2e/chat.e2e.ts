// Two users in two browser contexts chat through the real server: a dm and
// a group, media links, typing and read receipts, a second tab, a message
// sent while one page is offline, one written offline that survives a
// reload, and a server restart mid-conversation.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import {
  connState,
  launchBrowser,
  messages,
  openConv,
  openDm,
  screenshot,
  sendText,
  shownTexts,
  signIn,
  sleep,
  TernServer,
  UI_TIMEOUT_MS,
  unreadOf,
  until,
  waitOnline,
} from './harness';

const DM = 'dm:alice:bob';
const GROUP = 'group:team';
/** After a message showed up, how long to watch for a duplicate. */
const DUPLICATE_WATCH_MS = 1500;

let server: TernServer;
let browser: Browser;
let ctxA: BrowserContext;
let ctxB: BrowserContext;
let alice: Page;
let bob: Page;

beforeAll(async () => {
  server = new TernServer({ name: 'chat' });
  await server.start();
  browser = await launchBrowser();
  ctxA = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  ctxB = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  alice = await ctxA.newPage();
  bob = await ctxB.newPage();
  await signIn(alice, server.base, 'alice');
  await signIn(bob, server.base, 'bob');
});

afterAll(async () => {
  await browser?.close();
  await server?.dispose();
});

async function once(page: Page, text: string): Promise<void> {
  await until(() => messages(page, text).count(), 1);
  await sleep(DUPLICATE_WATCH_MS);
  expect(await messages(page, text).count()).toBe(1);
}

describe('two pages, two users', () => {
  it('chat in a dm with unread counts, typing and read receipts', async () => {
    await openDm(alice, 'bob');
    await sendText(alice, 'hello bob');
    await until(() => messages(alice, 'hello bob').count(), 1);

    await until(() => unreadOf(bob, DM), '1');
    await openConv(bob, DM);
    await once(bob, 'hello bob');
    await until(() => unreadOf(bob, DM), '0');

    // Bob read it: alice's message says so.
    await until(() => alice.locator('#messages li.msg.own .status').last().textContent(), '✓✓ read');

    await bob.type('#composer-input', 'typing', { delay: 30 });
    await until(async () => (await alice.textContent('#typing')) ?? '', 'bob is typing…');
    await bob.fill('#composer-input', '');
    await sendText(bob, 'hi alice');
    await once(alice, 'hi alice');
    await screenshot(alice, 'app-dm-alice');
    await screenshot(bob, 'app-dm-bob');
  });

  it('chat in a group, with an image and a file by URL', async () => {
    await alice.click('#new-group summary');
    await alice.fill('#new-group-id', 'team');
    await alice.fill('#new-group-name', 'Team');
    await alice.fill('#new-group-members', 'bob');
    await alice.click('#new-group-btn');
    await alice.waitForSelector(`#messages[data-conv="${GROUP}"]`, { timeout: UI_TIMEOUT_MS });
    await until(() => alice.locator('#messages li.event').count(), 1);

    await openConv(bob, GROUP);
    await sendText(bob, 'hi team');
    await once(alice, 'hi team');

    await alice.click('#attach-btn');
    await alice.selectOption('#attach-kind', 'image');
    await alice.fill('#attach-url', '/static/tern.svg');
    await alice.fill('#attach-name', 'tern.svg');
    await alice.click('#attach-send');
    const img = bob.locator('#messages li.msg img.preview');
    await until(() => img.count(), 1);
    expect(await img.getAttribute('src')).toBe(`${server.base}/static/tern.svg`);
    await until(() => img.evaluate((el) => (el as HTMLImageElement).naturalWidth > 0), true);

    await alice.click('#attach-btn');
    await alice.selectOption('#attach-kind', 'file');
    await alice.fill('#attach-url', 'https://example.com/files/report.pdf');
    await alice.click('#attach-send');
    const file = bob.locator('#messages li.msg .file-link');
    await until(() => file.count(), 1);
    expect(await file.textContent()).toContain('report.pdf');
    expect(await bob.locator('#messages li.msg .size').last().textContent()).toContain('application/pdf');
    await until(() => alice.locator('#messages li.msg.own .status').last().textContent(), '✓✓ read by 1');
    await screenshot(bob, 'app-group-bob');
  });

  it('a second tab of the same user gets the history and live messages', async () => {
    const alice2 = await ctxA.newPage();
    await alice2.goto(`${server.base}/app/`);
    await waitOnline(alice2);
    await openConv(alice2, DM);
    await until(() => messages(alice2, 'hello bob').count(), 1);
    await openConv(alice, DM);
    await openConv(bob, DM);
    await sendText(bob, 'to both tabs');
    await once(alice, 'to both tabs');
    await once(alice2, 'to both tabs');
    // A message from one tab shows in the other (multi-device sync).
    await sendText(alice2, 'from tab two');
    await once(alice, 'from tab two');
    await screenshot(alice2, 'app-second-tab');
    await alice2.close();
  });

  it('a message sent while a page is offline appears once after it reconnects', async () => {
    await bob.click('#toggle-conn');
    await until(() => connState(bob), 'paused');
    await sendText(alice, 'while you were away');
    await until(() => messages(alice, 'while you were away').count(), 1);
    await sleep(500);
    expect(await messages(bob, 'while you were away').count()).toBe(0);
    await screenshot(bob, 'app-offline');
    await bob.click('#toggle-conn');
    await waitOnline(bob);
    await once(bob, 'while you were away');
  });

  it('a message written offline survives a reload of the page and arrives once', async () => {
    await openConv(alice, DM);
    await openConv(bob, DM);
    await alice.click('#toggle-conn');
    await until(() => connState(alice), 'paused');
    await sendText(alice, 'written before a reload');
    await until(() => alice.locator('#messages li.msg.pending').count(), 1);
    // The tab reloads before it was ever online again: only the page's
    // storage holds the message now.
    await alice.reload();
    await waitOnline(alice);
    await openConv(alice, DM);
    await once(bob, 'written before a reload');
    await once(alice, 'written before a reload');
    expect(await alice.locator('#messages li.msg.pending').count()).toBe(0);
    await screenshot(alice, 'app-after-reload');
  });

  it('a server restart mid-conversation loses nothing visible', async () => {
    const beforeA = await shownTexts(alice);
    const beforeB = await shownTexts(bob);
    expect(beforeA).toContain('while you were away');

    expect(await server.stop()).toBe(0);
    await until(async () => ['offline', 'connecting'].includes((await connState(alice)) ?? ''), true);
    await sendText(alice, 'sent during the restart');
    await until(() => alice.locator('#messages li.msg.pending').count(), 1);
    await screenshot(alice, 'app-server-down');

    await server.start();
    await waitOnline(alice);
    await waitOnline(bob);
    await once(bob, 'sent during the restart');
    await once(alice, 'sent during the restart');
    expect(await alice.locator('#messages li.msg.pending').count()).toBe(0);

    const afterA = await shownTexts(alice);
    const afterB = await shownTexts(bob);
    for (const t of beforeA) expect(afterA).toContain(t);
    for (const t of beforeB) expect(afterB).toContain(t);
    expect(new Set(afterB).size).toBe(afterB.length);

    await sendText(bob, 'after the restart');
    await once(alice, 'after the restart');
    await screenshot(alice, 'app-after-restart');
  });
});
