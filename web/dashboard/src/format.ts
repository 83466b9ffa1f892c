// How values read on the page: times, durations, forwards as links, the colour of a phase or a kind.

export function clock(at: number): string {
  const d = new Date(at * 1000);
  const two = (n: number) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

export function ago(at: number | null, now: number): string {
  if (at === null) return "";
  const s = Math.max(0, Math.round(now - at));
  if (s < 5) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

export function ms(value: number | null): string {
  if (value === null) return "–";
  return value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(1)} s`;
}

// "127.0.0.1:8080 -> 8080" (engine/up.py): the local end as a link, the remote port beside it.
export function forwardLink(forward: string): { href: string; local: string; remote: string } | null {
  const match = /^(\S+):(\d+) -> (\S+)$/.exec(forward);
  if (match === null) return null;
  const [, address, port, remote] = match;
  const host = address === "0.0.0.0" ? "127.0.0.1" : address;
  return { href: `http://${host}:${port}/`, local: `${host}:${port}`, remote };
}

// The pod name without the workload's prefix: "api-7d9c8b-x2k4q" -> "x2k4q" when the service is "api".
export function shortPod(pod: string, service: string): string {
  if (!pod.startsWith(`${service}-`)) return pod;
  const parts = pod.split("-");
  return parts[parts.length - 1] || pod;
}

export type Tone = "ok" | "busy" | "warn" | "bad" | "idle" | "info";

export function phaseTone(phase: string): Tone {
  switch (phase) {
    case "running":
      return "ok";
    case "syncing":
      return "info";
    case "building":
    case "deploying":
      return "busy";
    case "error":
      return "bad";
    default:
      return "idle";
  }
}

export function replicaTone(state: string): Tone {
  if (state === "in sync") return "ok";
  if (state === "syncing") return "info";
  if (state === "reconnecting") return "warn";
  return "idle";
}

export function kindTone(kind: string, exitCode: number | null = null): Tone {
  switch (kind) {
    case "synced":
    case "deployed":
    case "cleared":
      return "ok";
    case "save":
    case "restarted":
    case "started":
    case "built":
    case "resumed":
      return "info";
    case "alert":
    case "crashed":
      return "bad";
    case "exited":
      return exitCode === 0 ? "warn" : "bad";
    case "paused":
      return "warn";
    default:
      return "idle";
  }
}

// A stable hue per service name, like the terminal's log prefixes.
export function serviceHue(name: string): number {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return h % 360;
}
