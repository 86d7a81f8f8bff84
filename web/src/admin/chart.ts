// A small canvas line chart: a rolling window of samples per series,
// auto-scaled, with a legend. No dependency.

export interface Series {
  name: string;
  color: string;
}

/** Samples kept per series: two minutes at one sample per second. */
export const WINDOW = 120;

export const PALETTE = ['#0f766e', '#2563eb', '#d97706', '#db2777', '#7c3aed', '#65a30d', '#0891b2', '#dc2626'];

export class LineChart {
  private data: number[][] = [];

  constructor(
    private canvas: HTMLCanvasElement,
    private series: Series[],
    private unit = '',
  ) {}

  /** Replace the series (e.g. when the shard count is first known). */
  setSeries(series: Series[]): void {
    if (series.length !== this.series.length) this.data = [];
    this.series = series;
  }

  push(values: number[]): void {
    values.forEach((v, i) => {
      const row = (this.data[i] ??= []);
      row.push(Number.isFinite(v) ? v : 0);
      if (row.length > WINDOW) row.shift();
    });
    this.draw();
  }

  draw(): void {
    const ctx = this.canvas.getContext('2d');
    if (!ctx) return;
    const { width: w, height: h } = this.canvas;
    const left = 44;
    const top = 22;
    const bottom = h - 18;
    ctx.clearRect(0, 0, w, h);
    const max = Math.max(1, ...this.data.flat());
    const nice = niceCeil(max);
    ctx.font = '11px system-ui, sans-serif';
    ctx.strokeStyle = '#e3e7ec';
    ctx.fillStyle = '#6b7785';
    for (let i = 0; i <= 4; i++) {
      const y = bottom - ((bottom - top) * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(w - 8, y);
      ctx.stroke();
      ctx.fillText(fmt((nice * i) / 4) + this.unit, 2, y + 4);
    }
    const dx = (w - 8 - left) / (WINDOW - 1);
    this.series.forEach((s, i) => {
      const row = this.data[i] ?? [];
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      row.forEach((v, j) => {
        const x = left + (WINDOW - row.length + j) * dx;
        const y = bottom - ((bottom - top) * v) / nice;
        if (j === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
      ctx.lineWidth = 1;
      const last = row[row.length - 1];
      ctx.fillStyle = s.color;
      const lx = left + i * 130;
      ctx.fillRect(lx, 6, 10, 10);
      ctx.fillStyle = '#1f2933';
      ctx.fillText(`${s.name}${last === undefined ? '' : ` ${fmt(last)}`}`, lx + 14, 15);
    });
  }
}

function niceCeil(v: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function fmt(v: number): string {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
  if (v >= 100 || Number.isInteger(v)) return v.toFixed(0);
  return v.toFixed(v >= 10 ? 1 : 2);
}
