// Numbers, sizes and times as people read them.

export function bytes(n) {
  if (!Number.isFinite(n) || n <= 0) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  const i = Math.min(Math.floor(Math.log10(n) / 3), units.length - 1);
  const value = n / 10 ** (3 * i);
  return `${value >= 100 || i === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[i]}`;
}

export function ago(iso) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const s = Math.max(0, (Date.now() - then) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(then).toLocaleDateString();
}

export function until(iso) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  if (new Date(then).getFullYear() > 2200) return "in use / kept loaded";
  const s = (then - Date.now()) / 1000;
  if (s <= 0) return "now";
  return s < 60 ? `in ${Math.ceil(s)} s` : `in ${Math.ceil(s / 60)} min`;
}

export function seconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}
