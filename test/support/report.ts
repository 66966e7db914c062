// Reports of the benches, fuzz and soak: Markdown tables, the machine they ran on, and the JSON written to bench/results/.
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './run-control.ts';

/** A Markdown table: the first column left-aligned, the others right-aligned. */
export function mdTable(head: readonly string[], body: readonly (readonly string[])[]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? '').length)));
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? ` ${'-'.repeat(w)} ` : ` ${'-'.repeat(Math.max(1, w - 1))}: `)).join('|')}|`;
  return [line(head), rule, ...body.map(line)].join('\n');
}

/** `v` with `digits` decimals, or — when it is missing or not finite. */
export const fmt = (v: number | null | undefined, digits: number): string => (v === null || v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(digits));

export function machineInfo(): { cpus: number; model: string; loadavg: number[]; node: string; platform: string } {
  const cpu = cpus();
  return { cpus: cpu.length, model: cpu[0]?.model ?? 'unknown', loadavg: loadavg().map((l) => Math.round(l * 100) / 100), node: process.version, platform: `${process.platform}-${process.arch}` };
}

/** Writes bench/results/<name> (JSON, pretty). */
export async function writeResult(name: string, report: unknown): Promise<void> {
  await mkdir(join(ROOT, 'bench', 'results'), { recursive: true });
  await writeFile(join(ROOT, 'bench', 'results', name), `${JSON.stringify(report, null, 2)}\n`);
}
