// Tern's browser chat: sign-in (demo or token), conversation list with
// unread counts, dm and group chat, media links with previews, typing,
// read receipts, and a visible connection state. All protocol work is done
// by the client library in ../lib; this file is only the page.
import {
  dmConv,
  isValidId,
  newCmid,
  SendError,
  TernClient,
  webStorageOutbox,
  type Entry,
  type Kind,
  type MediaBody,
  type MsgEntry,
  type PendingSend,
  type StateInfo,
} from '../lib';
import { describeEvent, Model, type Conv } from './model';
import './style.css';

interface Config {
  demo: boolean;
  ws_port: number;
  ws_path: string;
}
interface Session {
  user: string;
  token: string;
  expires_ts: number;
}

const SESSION_KEY = 'tern.session';
const DEVICE_KEY = 'tern.device';
/** Prefix of the sessionStorage key of a device's unsent messages. */
const OUTBOX_KEY = 'tern.outbox';
/** Re-mint a demo token this long before it expires. */
const TOKEN_REFRESH_MS = 10 * 60_000;
/** At most one `typing` frame per this interval. */
const TYPING_EVERY_MS = 2000;
/** A typing indicator shows this long after the last `typing` frame. */
const TYPING_SHOWN_MS = 4000;
/** Debounce of `read` frames. */
const READ_DELAY_MS = 200;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};

let config: Config = { demo: false, ws_port: 7700, ws_path: '/ws' };
let session: Session | null = null;
let client: TernClient | null = null;
let model: Model | null = null;
let active: string | null = null;
let outbox: PendingSend[] = [];
let lastTypingSent = 0;
let readTimer: ReturnType<typeof setTimeout> | null = null;
let renderQueued = false;
let forceNewToken = false;

function deviceId(fresh = false): string {
  let d = sessionStorage.getItem(DEVICE_KEY);
  if (!d || fresh) {
    d = `web-${newCmid().slice(0, 10)}`;
    sessionStorage.setItem(DEVICE_KEY, d);
  }
  return d;
}

function wsUrl(): string {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.hostname}:${config.ws_port}${config.ws_path}`;
}

async function postJson<T>(path: string, body: object): Promise<T> {
  const r = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const j = (await r.json().catch(() => ({}))) as { error?: { message?: string } };
  if (!r.ok) throw new Error(j.error?.message ?? `${r.status} ${r.statusText}`);
  return j as T;
}

async function demoSession(user: string): Promise<Session> {
  return postJson<Session>('/demo/session', { user });
}

/** The token for the next connection attempt (a demo token is renewed when near expiry). */
async function currentToken(): Promise<string> {
  if (!session) throw new Error('signed out');
  if (config.demo && (forceNewToken || session.expires_ts - Date.now() < TOKEN_REFRESH_MS)) {
    session = await demoSession(session.user);
    localStorage.setItem(SESSION_KEY, JSON.stringify(session));
    forceNewToken = false;
  }
  return session.token;
}

// ---- sign-in ----

function showSignIn(error = ''): void {
  $('signin').hidden = false;
  $('chat').hidden = true;
  $('toggle-conn').hidden = true;
  $('signout').hidden = true;
  $('me').textContent = '';
  $('token-label').hidden = config.demo;
  $('signin-mode').textContent = config.demo
    ? 'Demo mode: pick any user id; it is created if new.'
    : 'Paste an access token minted by your backend (POST /v1/users/{user}/tokens).';
  $('signin-error').textContent = error;
  setConn({ state: 'idle' });
}

async function onSignIn(ev: Event): Promise<void> {
  ev.preventDefault();
  const user = $<HTMLInputElement>('signin-user').value.trim();
  if (!isValidId(user)) {
    $('signin-error').textContent = 'A user id is 1–64 of A–Z a–z 0–9 _ . @ -';
    return;
  }
  try {
    if (config.demo) {
      session = await demoSession(user);
    } else {
      const token = $<HTMLTextAreaElement>('signin-token').value.trim();
      if (!token) throw new Error('paste a token');
      session = { user, token, expires_ts: Number.MAX_SAFE_INTEGER };
    }
  } catch (e) {
    $('signin-error').textContent = `Sign-in failed: ${(e as Error).message}`;
    return;
  }
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  startChat();
}

function signOut(): void {
  client?.close();
  client = null;
  session = null;
  localStorage.removeItem(SESSION_KEY);
  showSignIn();
}

// ---- the chat ----

function startChat(fresh = false): void {
  if (!session) return;
  client?.close();
  model = new Model(session.user);
  active = null;
  $('signin').hidden = true;
  $('chat').hidden = false;
  $('toggle-conn').hidden = false;
  $('signout').hidden = false;
  $('me').textContent = session.user;
  $('messages').replaceChildren();
  $('messages').dataset.conv = '';
  const device = deviceId(fresh);
  const c = new TernClient({
    url: wsUrl(),
    device,
    token: currentToken,
    // Per tab, like the device id: a reload sends what was still waiting,
    // and two tabs never overwrite each other's list.
    outboxStore: webStorageOutbox(sessionStorage, `${OUTBOX_KEY}.${session.user}.${device}`),
  });
  client = c;
  c.on('state', (s) => {
    if (s.state === 'offline' && s.reason === 'unauthorized') {
      if (config.demo) forceNewToken = true;
      else {
        signOut();
        $('signin-error').textContent = 'The token was refused; sign in again.';
        return;
      }
    }
    if (s.state === 'stopped' && s.reason === 'replaced') {
      // Another tab took this device id (a duplicated tab): become a new device.
      setTimeout(() => startChat(true), 0);
      return;
    }
    setConn(s);
  });
  c.on('entry', ({ entry }) => {
    model?.add(entry);
    if (entry.conv === active) scheduleRead();
    scheduleRender();
  });
  c.on('convs', (convs) => {
    if (!model) return;
    for (const info of convs) {
      const conv = model.ensure(info.conv);
      conv.maxSeq = Math.max(conv.maxSeq, info.max_seq);
      conv.readSeq = Math.max(conv.readSeq, info.read_seq);
    }
    scheduleRender();
  });
  c.on('receipt', (r) => {
    if (!model) return;
    const conv = model.ensure(r.conv);
    if (r.user === model.me) conv.readSeq = Math.max(conv.readSeq, r.read_seq);
    else conv.reads.set(r.user, Math.max(conv.reads.get(r.user) ?? 0, r.read_seq));
    scheduleRender();
  });
  c.on('typing', (t) => {
    if (!model) return;
    model.ensure(t.conv).typing.set(t.user, Date.now() + TYPING_SHOWN_MS);
    scheduleRender();
    setTimeout(scheduleRender, TYPING_SHOWN_MS + 50);
  });
  c.on('outbox', (items) => {
    outbox = items;
    scheduleRender();
  });
  c.on('error', (e) => {
    $('send-error').textContent = `Server: ${e.code}: ${e.message}`;
  });
  c.on('sendFailed', (e) => {
    $('send-error').textContent = `Not sent: ${e.code}: ${e.message}`;
  });
  c.start();
  scheduleRender();
}

function setConn(s: StateInfo): void {
  const el = $('conn-state');
  el.dataset.state = s.state;
  const text: Record<StateInfo['state'], string> = {
    idle: 'not connected',
    connecting: 'connecting…',
    online: 'online',
    offline: `offline, retrying in ${Math.ceil((s.retryInMs ?? 0) / 1000)} s`,
    paused: 'offline (paused)',
    stopped: `disconnected${s.reason ? `: ${s.reason}` : ''}`,
  };
  el.textContent = text[s.state];
  el.title = s.reason ?? '';
  const toggle = $('toggle-conn');
  toggle.textContent = s.state === 'paused' || s.state === 'stopped' ? 'Go online' : 'Go offline';
}

function openConv(id: string): void {
  if (!model) return;
  model.ensure(id);
  active = id;
  $('composer').hidden = false;
  $('send-error').textContent = '';
  scheduleRead();
  scheduleRender();
  $<HTMLInputElement>('composer-input').focus();
}

function scheduleRead(): void {
  if (readTimer) return;
  readTimer = setTimeout(() => {
    readTimer = null;
    if (!model || !client || !active || document.visibilityState !== 'visible') return;
    const conv = model.ensure(active);
    if (conv.maxSeq > conv.readSeq) {
      conv.readSeq = conv.maxSeq;
      client.read(conv.id, conv.maxSeq);
      scheduleRender();
    }
  }, READ_DELAY_MS);
}

async function send(kind: Kind, body: unknown): Promise<void> {
  if (!client || !active) return;
  $('send-error').textContent = '';
  try {
    await client.send(active, kind, body);
  } catch (e) {
    const err = e as SendError;
    $('send-error').textContent = `Not sent: ${err.code ?? ''} ${err.message}`;
  }
}

// ---- rendering ----

function scheduleRender(): void {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 0);
}

function render(): void {
  if (!model) return;
  const now = Date.now();
  let totalUnread = 0;
  const list = $('conv-list');
  const items: HTMLElement[] = [];
  for (const c of model.sorted()) {
    const li = document.createElement('li');
    li.dataset.conv = c.id;
    li.className = c.id === active ? 'active' : '';
    const title = document.createElement('span');
    title.className = 'title';
    title.textContent = model.title(c);
    const preview = document.createElement('span');
    preview.className = 'preview';
    const typers = model.typers(c, now);
    preview.textContent = typers.length ? 'typing…' : lastPreview(c);
    const unread = model.unread(c);
    totalUnread += unread;
    const badge = document.createElement('span');
    badge.className = 'unread';
    badge.textContent = String(unread);
    badge.hidden = unread === 0 || c.id === active;
    li.append(title, badge, preview);
    li.addEventListener('click', () => openConv(c.id));
    items.push(li);
  }
  list.replaceChildren(...items);
  document.title = totalUnread ? `(${totalUnread}) Tern chat` : 'Tern chat';
  renderActive(now);
}

function lastPreview(c: Conv): string {
  const e = c.entries[c.entries.length - 1];
  if (!e) return '';
  if (e.type === 'event') return describeEvent(e);
  return `${e.from}: ${e.kind === 'text' ? String(e.body) : `[${e.kind}]`}`.slice(0, 80);
}

function renderActive(now: number): void {
  const box = $('messages');
  if (!model || !active) return;
  const conv = model.ensure(active);
  $('chat-title').textContent = model.title(conv);
  const typers = model.typers(conv, now);
  $('typing').textContent = typers.length ? `${typers.join(', ')} ${typers.length > 1 ? 'are' : 'is'} typing…` : '';
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  if (box.dataset.conv !== conv.id) {
    box.replaceChildren();
    box.dataset.conv = conv.id;
  }
  // Insert entries not shown yet, in seq order; update receipts on own messages.
  const shown = new Map<number, HTMLElement>();
  for (const li of Array.from(box.children) as HTMLElement[]) {
    if (li.classList.contains('pending')) li.remove();
    else shown.set(Number(li.dataset.seq), li);
  }
  let next: HTMLElement | null = null;
  for (let i = conv.entries.length - 1; i >= 0; i--) {
    const e = conv.entries[i];
    let li = shown.get(e.seq) ?? null;
    if (!li) {
      li = renderEntry(e);
      box.insertBefore(li, next);
    }
    if (e.type === 'msg' && e.from === model.me) updateStatus(li, conv, e);
    next = li;
  }
  for (const p of outbox) {
    if (p.to !== conv.id) continue;
    const li = renderBubble(model.me, p.kind, p.body, Date.now(), true);
    li.classList.add('pending');
    li.querySelector('.status')!.textContent = p.attempts > 1 ? 'sending again…' : 'sending…';
    box.append(li);
  }
  if (nearBottom) box.scrollTop = box.scrollHeight;
}

function updateStatus(li: HTMLElement, conv: Conv, e: MsgEntry): void {
  if (!model) return;
  const n = model.readBy(conv, e.seq);
  const status = li.querySelector('.status');
  if (!status) return;
  const text = n === 0 ? '✓ sent' : conv.id.startsWith('dm:') ? '✓✓ read' : `✓✓ read by ${n}`;
  if (status.textContent !== text) status.textContent = text;
  li.classList.toggle('read', n > 0);
}

function renderEntry(e: Entry): HTMLElement {
  if (e.type === 'event') {
    const li = document.createElement('li');
    li.className = 'event';
    li.dataset.seq = String(e.seq);
    li.textContent = describeEvent(e);
    return li;
  }
  const li = renderBubble(e.from, e.kind, e.body, e.ts, e.from === model?.me);
  li.dataset.seq = String(e.seq);
  li.dataset.cmid = e.cmid;
  return li;
}

function renderBubble(from: string, kind: Kind, body: unknown, ts: number, own: boolean): HTMLElement {
  const li = document.createElement('li');
  li.className = `msg${own ? ' own' : ''}`;
  const meta = document.createElement('div');
  meta.className = 'meta';
  const who = document.createElement('span');
  who.className = 'from';
  who.textContent = from;
  const when = document.createElement('time');
  when.textContent = new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  meta.append(who, when);
  li.append(meta, renderBody(kind, body));
  if (own) {
    const st = document.createElement('div');
    st.className = 'status';
    li.append(st);
  }
  return li;
}

/** A link safe to put in href/src: http(s), same-origin paths, data: images. */
function safeUrl(raw: unknown, image: boolean): string | null {
  if (typeof raw !== 'string') return null;
  try {
    const u = new URL(raw, location.href);
    if (u.protocol === 'http:' || u.protocol === 'https:') return u.href;
    if (image && u.protocol === 'data:' && raw.startsWith('data:image/')) return raw;
  } catch {
    /* not a URL */
  }
  return null;
}

function humanSize(n: unknown): string {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function renderBody(kind: Kind, body: unknown): HTMLElement {
  const div = document.createElement('div');
  div.className = `body ${kind}`;
  if (kind === 'text') {
    div.classList.add('text');
    div.textContent = typeof body === 'string' ? body : JSON.stringify(body);
    return div;
  }
  const media = (body ?? {}) as MediaBody;
  const url = safeUrl(media.url, kind === 'image');
  const name = typeof media.name === 'string' && media.name ? media.name : url ? (url.split('/').pop() ?? url) : kind;
  if (url && kind === 'image') {
    const a = document.createElement('a');
    a.href = url;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    const img = document.createElement('img');
    img.className = 'preview';
    img.src = url;
    img.alt = name;
    img.loading = 'lazy';
    a.append(img);
    div.append(a);
    return div;
  }
  if (url) {
    const a = document.createElement('a');
    a.className = 'file-link';
    a.href = url;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    a.textContent = name;
    const size = document.createElement('span');
    size.className = 'size';
    size.textContent = [typeof media.mime === 'string' ? media.mime : '', humanSize(media.size)].filter(Boolean).join(' · ');
    div.append(a, size);
    return div;
  }
  div.textContent = `[${kind}] ${JSON.stringify(body)}`;
  return div;
}

function guessMime(url: string, kind: string): string {
  const ext = url.split('?')[0].split('.').pop()?.toLowerCase() ?? '';
  const known: Record<string, string> = {
    png: 'image/png',
    jpg: 'image/jpeg',
    jpeg: 'image/jpeg',
    gif: 'image/gif',
    webp: 'image/webp',
    svg: 'image/svg+xml',
    pdf: 'application/pdf',
    txt: 'text/plain',
    zip: 'application/zip',
  };
  return known[ext] ?? (kind === 'image' ? 'image/*' : 'application/octet-stream');
}

// ---- wiring ----

function wire(): void {
  $('signin-form').addEventListener('submit', (ev) => void onSignIn(ev));
  $('signout').addEventListener('click', signOut);
  $('toggle-conn').addEventListener('click', () => {
    if (!client) return;
    const s = client.state.state;
    if (s === 'paused' || s === 'stopped') client.resume();
    else client.pause();
  });
  $('new-dm').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>('new-dm-user');
    const peer = input.value.trim();
    if (!session || !isValidId(peer)) {
      input.setCustomValidity('1–64 of A–Z a–z 0–9 _ . @ -');
      input.reportValidity();
      return;
    }
    input.setCustomValidity('');
    input.value = '';
    openConv(dmConv(session.user, peer));
  });
  $('new-group-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    void (async () => {
      if (!session) return;
      const err = $('new-group-error');
      err.textContent = '';
      const group = $<HTMLInputElement>('new-group-id').value.trim();
      const name = $<HTMLInputElement>('new-group-name').value.trim();
      const others = $<HTMLInputElement>('new-group-members')
        .value.split(/[\s,]+/)
        .filter(Boolean);
      if (!config.demo) {
        err.textContent = 'Groups are created by your backend (PUT /v1/groups/{group}).';
        return;
      }
      try {
        const r = await postJson<{ conv: string }>('/demo/groups', {
          group,
          name: name || undefined,
          members: [session.user, ...others],
        });
        ($('new-group') as HTMLDetailsElement).open = false;
        openConv(r.conv);
      } catch (e) {
        err.textContent = (e as Error).message;
      }
    })();
  });
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>('composer-input');
    const text = input.value;
    if (!text.trim()) return;
    input.value = '';
    void send('text', text);
  });
  $('composer-input').addEventListener('input', () => {
    if (!client || !active) return;
    const now = Date.now();
    if (now - lastTypingSent < TYPING_EVERY_MS) return;
    lastTypingSent = now;
    client.typing(active);
  });
  $('attach-btn').addEventListener('click', () => {
    $('attach-form').hidden = !$('attach-form').hidden;
    $<HTMLInputElement>('attach-url').focus();
  });
  $('attach-cancel').addEventListener('click', () => {
    $('attach-form').hidden = true;
  });
  $('attach-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const kind = $<HTMLSelectElement>('attach-kind').value as Kind;
    const raw = $<HTMLInputElement>('attach-url').value.trim();
    const url = safeUrl(raw, kind === 'image');
    if (!url) {
      $('send-error').textContent = 'Give an http(s) URL (or a path on this server).';
      return;
    }
    const name = $<HTMLInputElement>('attach-name').value.trim() || url.split('/').pop() || kind;
    $<HTMLInputElement>('attach-url').value = '';
    $<HTMLInputElement>('attach-name').value = '';
    $('attach-form').hidden = true;
    void send(kind, { url, name, mime: guessMime(url, kind) });
  });
  document.addEventListener('visibilitychange', scheduleRead);
}

async function main(): Promise<void> {
  wire();
  try {
    const r = await fetch('/app/config.json', { cache: 'no-store' });
    if (r.ok) config = (await r.json()) as Config;
  } catch {
    /* defaults */
  }
  const saved = localStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      session = JSON.parse(saved) as Session;
    } catch {
      session = null;
    }
  }
  if (session && isValidId(session.user)) startChat();
  else showSignIn();
}

void main();
