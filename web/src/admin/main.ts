// Tern's operations dashboard: polls `GET /admin/stats` every second with the
// operator's API key and plots the differences; looks up presence and
// kicks through the public `/v1` routes.
import { isValidId } from '../lib';
import { LineChart, PALETTE, fmt } from './chart';
import { derive, type Stats } from './stats';
import './style.css';

const KEY_STORAGE = 'tern.admin.key';
/** Poll period (the charts move once a second). */
const POLL_MS = 1000;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};

let key = sessionStorage.getItem(KEY_STORAGE) ?? '';
let prev: Stats | null = null;
let timer: ReturnType<typeof setTimeout> | null = null;

const charts = {
  connections: new LineChart($<HTMLCanvasElement>('chart-connections'), [{ name: 'shard 0', color: PALETTE[0] }]),
  rates: new LineChart($<HTMLCanvasElement>('chart-rates'), [
    { name: 'in', color: PALETTE[0] },
    { name: 'stored', color: PALETTE[1] },
    { name: 'deliveries', color: PALETTE[2] },
  ]),
  fanout: new LineChart($<HTMLCanvasElement>('chart-fanout'), [
    { name: 'mean', color: PALETTE[3] },
    { name: 'max bucket', color: PALETTE[4] },
  ]),
  storage: new LineChart($<HTMLCanvasElement>('chart-storage'), [
    { name: 'commit ms', color: PALETTE[1] },
    { name: 'batch size', color: PALETTE[5] },
  ]),
  webhook: new LineChart($<HTMLCanvasElement>('chart-webhook'), [
    { name: 'queue', color: PALETTE[6] },
    { name: 'delivered/s', color: PALETTE[7] },
  ]),
};

async function api(method: string, path: string, body?: object): Promise<Response> {
  return fetch(path, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    cache: 'no-store',
  });
}

async function errorText(r: Response): Promise<string> {
  const j = (await r.json().catch(() => ({}))) as { error?: { code?: string; message?: string } };
  return j.error ? `${j.error.code}: ${j.error.message}` : `${r.status} ${r.statusText}`;
}

function showKey(error = ''): void {
  if (timer) clearTimeout(timer);
  timer = null;
  $('key-view').hidden = false;
  $('dash').hidden = true;
  $('forget-key').hidden = true;
  $('key-error').textContent = error;
  setPoll('idle', 'not polling');
}

function setPoll(state: string, text: string): void {
  const el = $('poll-state');
  el.dataset.state = state;
  el.textContent = text;
}

async function poll(): Promise<void> {
  timer = null;
  try {
    const r = await api('GET', '/admin/stats');
    if (r.status === 401 || r.status === 403) {
      sessionStorage.removeItem(KEY_STORAGE);
      showKey(`The server refused the key (${await errorText(r)}).`);
      return;
    }
    if (!r.ok) throw new Error(await errorText(r));
    const cur = (await r.json()) as Stats;
    update(cur);
    setPoll('live', `live · ${new Date(cur.ts).toLocaleTimeString()}`);
  } catch (e) {
    setPoll('error', `server unreachable: ${(e as Error).message}`);
  }
  timer = setTimeout(() => void poll(), POLL_MS);
}

function update(cur: Stats): void {
  const d = derive(prev, cur);
  prev = cur;
  $('total-connections').textContent = String(d.connections);
  $('shards').textContent = `${cur.connections_per_shard.length} shards: ${cur.connections_per_shard.join(' / ')}`;
  $('rate-in').textContent = fmt(d.inPerS);
  $('total-in').textContent = `${cur.messages_in} total, ${cur.messages_stored} stored`;
  $('rate-deliveries').textContent = fmt(d.deliveriesPerS);
  $('total-deliveries').textContent = `${cur.deliveries} total, ${cur.redeliveries} again`;
  const lat = cur.storage.commit_latency_us;
  $('batch-latency').textContent = lat.count ? `${(lat.sum / lat.count / 1000).toFixed(2)} ms` : '–';
  $('batch-size').textContent = `mean commit over ${lat.count} batches; max ${(cur.storage.commit_latency_us_max / 1000).toFixed(1)} ms`;
  $('webhook-queue').textContent = String(cur.webhook.queue_depth);
  $('webhook-sub').textContent = `${cur.webhook.delivered} delivered, ${cur.webhook.dropped} dropped, ${cur.webhook.failed} failed`;
  const shards = cur.connections_per_shard.map((_, i) => ({ name: `shard ${i}`, color: PALETTE[i % PALETTE.length] }));
  charts.connections.setSeries(shards);
  charts.connections.push(cur.connections_per_shard);
  charts.rates.push([d.inPerS, d.storedPerS, d.deliveriesPerS]);
  charts.fanout.push([d.fanoutMean, d.fanoutMax]);
  charts.storage.push([d.commitMeanMs, d.batchMean]);
  charts.webhook.push([d.webhookQueue, d.webhookPerS]);
}

function start(): void {
  $('key-view').hidden = true;
  $('dash').hidden = false;
  $('forget-key').hidden = false;
  prev = null;
  void poll();
}

async function lookup(user: string): Promise<void> {
  const out = $('presence-result');
  const err = $('presence-error');
  err.textContent = '';
  out.replaceChildren();
  const r = await api('GET', `/v1/users/${encodeURIComponent(user)}/presence`);
  if (!r.ok) {
    err.textContent = await errorText(r);
    return;
  }
  const p = (await r.json()) as { user: string; online: boolean; devices: { device: string; since_ts: number }[] };
  const head = document.createElement('p');
  head.id = 'presence-summary';
  head.textContent = `${p.user} is ${p.online ? `online on ${p.devices.length} device${p.devices.length === 1 ? '' : 's'}` : 'offline'}`;
  const ul = document.createElement('ul');
  ul.className = 'devices';
  for (const d of p.devices) {
    const li = document.createElement('li');
    li.textContent = `${d.device} since ${new Date(d.since_ts).toLocaleTimeString()} `;
    const b = document.createElement('button');
    b.textContent = 'Kick';
    b.className = 'kick-device';
    b.addEventListener('click', () => void kick(p.user, d.device));
    li.append(b);
    ul.append(li);
  }
  out.append(head, ul);
  if (p.online) {
    const all = document.createElement('button');
    all.id = 'kick-all';
    all.textContent = 'Kick every device';
    all.addEventListener('click', () => void kick(p.user));
    out.append(all);
  }
}

async function kick(user: string, device?: string): Promise<void> {
  const r = await api('POST', `/v1/users/${encodeURIComponent(user)}/kick`, { device, reason: 'kicked by an operator' });
  if (!r.ok) {
    $('presence-error').textContent = await errorText(r);
    return;
  }
  const { kicked } = (await r.json()) as { kicked: number };
  await lookup(user);
  $('presence-error').textContent = `kicked ${kicked} connection${kicked === 1 ? '' : 's'}`;
}

$('key-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  key = $<HTMLInputElement>('api-key').value.trim();
  sessionStorage.setItem(KEY_STORAGE, key);
  start();
});
$('forget-key').addEventListener('click', () => {
  key = '';
  sessionStorage.removeItem(KEY_STORAGE);
  showKey();
});
$('presence-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const user = $<HTMLInputElement>('presence-user').value.trim();
  if (!isValidId(user)) {
    $('presence-error').textContent = 'A user id is 1–64 of A–Z a–z 0–9 _ . @ -';
    return;
  }
  void lookup(user);
});

if (key) start();
else showKey();
