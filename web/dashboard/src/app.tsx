import { memo } from "preact/compat";
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import { ago, clock, forwardLink, kindTone, ms, phaseTone, replicaTone, serviceHue, shortPod } from "./format";
import { type LogLine, Model } from "./model";
import type { Alert, Message, Service, TimelineEvent } from "./types";

type Link = "connecting" | "live" | "reconnecting" | "closed";
interface Toast {
  id: number;
  text: string;
  bad: boolean;
}

const SHOWN_LOGS = 1000; // of the lines that match: the DOM stays light while the model keeps more
const SHOWN_EVENTS = 300;

function useDashboard(): { model: Model; version: number; link: Link } {
  const model = useMemo(() => new Model(), []);
  const [version, setVersion] = useState(0);
  const [link, setLink] = useState<Link>("connecting");
  useEffect(() => {
    let frame = 0;
    const redraw = () => {
      frame = 0;
      setVersion((v) => v + 1);
    };
    const source = new EventSource("/events");
    source.onopen = () => setLink("live");
    source.onmessage = (event: MessageEvent<string>) => {
      model.apply(JSON.parse(event.data) as Message);
      if (frame === 0) frame = requestAnimationFrame(redraw); // one render per frame, however many changes
    };
    // EventSource retries by itself while `up` is away; a refusal (a new `up`, a new token) closes it.
    source.onerror = () => setLink(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    return () => {
      source.close();
      if (frame !== 0) cancelAnimationFrame(frame);
    };
  }, [model]);
  return { model, version, link };
}

function useNow(): number {
  const [now, setNow] = useState(Date.now() / 1000);
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now() / 1000), 1000);
    return () => clearInterval(timer);
  }, []);
  return now;
}

export function App() {
  const { model, version, link } = useDashboard();
  const now = useNow();
  const [focus, setFocus] = useState<string | null>(null);
  const [toasts, setToasts] = useState<Toast[]>([]);
  const [busy, setBusy] = useState<Record<string, boolean>>({});

  const toast = (text: string, bad: boolean) => {
    const id = Date.now() + Math.random();
    setToasts((all) => [...all, { id, text, bad }]);
    setTimeout(() => setToasts((all) => all.filter((t) => t.id !== id)), bad ? 8000 : 4000);
  };

  const act = async (service: string, action: string) => {
    const key = `${service}/${action}`;
    setBusy((b) => ({ ...b, [key]: true }));
    try {
      const response = await fetch(`/api/v1/services/${encodeURIComponent(service)}/${action}`, { method: "POST" });
      const body = (await response.json().catch(() => ({}))) as { message?: string; error?: string };
      if (response.ok) toast(`${service}: ${body.message ?? action}`, false);
      else toast(`${service}: ${body.error ?? `${action} failed (${response.status})`}`, true);
    } catch (err) {
      toast(`${service}: ${action} failed: ${String(err)}`, true);
    } finally {
      setBusy((b) => ({ ...b, [key]: false }));
    }
  };

  const services = Object.values(model.services).sort((a, b) => a.name.localeCompare(b.name));
  const active = Object.values(model.alerts).sort((a, b) => b.raised_at - a.raised_at);
  document.title = active.length ? `(${active.length}) innerloop · ${model.project}` : `innerloop · ${model.project}`;

  return (
    <div class="page" data-version={version}>
      <header class="top">
        <div class="brand">
          <span class="logo" aria-hidden="true" />
          innerloop
        </div>
        <div class="where">
          <strong>{model.project || "…"}</strong>
          {model.namespace && <span class="muted"> in namespace {model.namespace}</span>}
        </div>
        <div class="summary">
          <span class="muted">
            {services.length} service{services.length === 1 ? "" : "s"}
          </span>
          {active.length > 0 && (
            <a class="pill bad" href="#alerts">
              {active.length} alert{active.length === 1 ? "" : "s"}
            </a>
          )}
          <LinkState link={link} />
        </div>
      </header>
      {link === "closed" && (
        <div class="banner bad">
          This page lost `innerloop up`. When it runs again, open the dashboard URL it prints (each `up` has a new
          token).
        </div>
      )}
      <main>
        <Alerts active={active} cleared={model.cleared} now={now} />
        <section class="panel">
          <h2>Services</h2>
          <div class="services">
            {services.length === 0 && <div class="empty">Waiting for `innerloop up` to plan its services…</div>}
            {services.map((s) => (
              <ServiceRow
                key={s.name}
                service={s}
                model={model}
                now={now}
                focused={focus === s.name}
                onFocus={() => setFocus(focus === s.name ? null : s.name)}
                act={act}
                busy={busy}
              />
            ))}
          </div>
        </section>
        <div class="split">
          <Logs model={model} version={model.logsVersion} names={services.map((s) => s.name).join("\n")} focus={focus} setFocus={setFocus} />
          <Timeline events={model.timeline} focus={focus} version={model.timelineVersion} />
        </div>
      </main>
      <div class="toasts" role="status">
        {toasts.map((t) => (
          <div key={t.id} class={`toast ${t.bad ? "bad" : ""}`}>
            {t.text}
          </div>
        ))}
      </div>
    </div>
  );
}

function LinkState({ link }: { link: Link }) {
  const text = { connecting: "connecting", live: "live", reconnecting: "reconnecting", closed: "disconnected" }[link];
  const tone = { connecting: "idle", live: "ok", reconnecting: "warn", closed: "bad" }[link];
  return (
    <span class={`link ${tone}`} data-link={link}>
      <span class="dot" />
      {text}
    </span>
  );
}

function Alerts({ active, cleared, now }: { active: Alert[]; cleared: Alert[]; now: number }) {
  if (active.length === 0 && cleared.length === 0) return null;
  return (
    <section class="panel alerts" id="alerts">
      <h2>
        Alerts {active.length === 0 && <span class="muted small">· none active</span>}
      </h2>
      {active.map((a) => (
        <AlertCard key={a.key} alert={a} now={now} />
      ))}
      {cleared.length > 0 && (
        <details class="cleared">
          <summary>
            {cleared.length} cleared alert{cleared.length === 1 ? "" : "s"}
          </summary>
          {[...cleared].reverse().map((a) => (
            <AlertCard key={`${a.key}@${a.cleared_at}`} alert={a} now={now} />
          ))}
        </details>
      )}
    </section>
  );
}

// "oom-killed" -> "OOM killed", "app-error" -> "App error": the kind as a heading.
function kindLabel(kind: string): string {
  const words = kind.split("-").map((w) => (w === "oom" ? "OOM" : w));
  const text = words.join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function AlertCard({ alert, now }: { alert: Alert; now: number }) {
  return (
    <article class={`alert ${alert.active ? "" : "gone"}`} data-alert-kind={alert.kind} data-alert-service={alert.service}>
      <div class="alert-head">
        <span class="alert-kind">{kindLabel(alert.kind)}</span>
        <span class="svc" style={{ "--hue": serviceHue(alert.service) }}>
          {alert.service}
        </span>
        {alert.pod && <span class="muted mono small">{alert.pod}</span>}
        {alert.count > 1 && <span class="pill idle">×{alert.count}</span>}
        <span class="muted small right" title={clock(alert.raised_at)}>
          {alert.active ? `raised ${ago(alert.raised_at, now)}` : `cleared ${ago(alert.cleared_at, now)}`}
        </span>
      </div>
      <div class="alert-cause">{alert.cause}</div>
      {alert.hint && (
        <div class="alert-hint">
          <span class="label">What to do</span> {alert.hint}
        </div>
      )}
      {alert.details.length > 0 && (
        <details class="alert-details" open={alert.active}>
          <summary>details</summary>
          <pre>{alert.details.join("\n")}</pre>
        </details>
      )}
    </article>
  );
}

// What the last save of this service did: the timeline's events for it since its last "save".
function lastSave(events: TimelineEvent[], service: string): { at: number; kinds: TimelineEvent[] } | null {
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i];
    if (e.service === service && e.kind === "save") {
      const after = events.slice(i + 1).filter((x) => x.service === service && x.kind !== "save");
      return { at: e.at, kinds: after.slice(0, 4) };
    }
  }
  return null;
}

interface RowProps {
  service: Service;
  model: Model;
  now: number;
  focused: boolean;
  onFocus: () => void;
  act: (service: string, action: string) => Promise<void>;
  busy: Record<string, boolean>;
}

function ServiceRow({ service: s, model, now, focused, onFocus, act, busy }: RowProps) {
  const replicas = Object.values(s.replicas);
  const alerts = Object.values(model.alerts).filter((a) => a.service === s.name);
  const offered = new Set(model.actions);
  const save = lastSave(model.timeline, s.name);
  const lastSynced = replicas.reduce<number | null>((m, r) => (r.synced_at !== null && (m === null || r.synced_at > m) ? r.synced_at : m), null);
  const buttons: { action: string; label: string; title: string }[] = [];
  if (s.dev_mode && offered.has("restart"))
    buttons.push({ action: "restart", label: "Restart", title: "Restart the process in every replica (no new pod)" });
  if (offered.has("rebuild"))
    buttons.push({ action: "rebuild", label: "Rebuild", title: "Build the image again and redeploy the service" });
  if (s.dev_mode && s.sync_paused && offered.has("resume"))
    buttons.push({ action: "resume", label: "Resume sync", title: "Sync saved files again (what changed meanwhile goes first)" });
  if (s.dev_mode && !s.sync_paused && offered.has("pause"))
    buttons.push({ action: "pause", label: "Pause sync", title: "Stop sending saved files to the containers" });
  return (
    <div
      class={`service ${focused ? "focused" : ""} ${alerts.length ? "alerting" : ""}`}
      data-service={s.name}
      data-phase={s.phase}
      data-syncs={s.syncs}
    >
      <div class="svc-main">
        <button class="svc-name" style={{ "--hue": serviceHue(s.name) }} onClick={onFocus} title="Show only this service's logs and events">
          {s.name}
        </button>
        <span class={`pill ${phaseTone(s.phase)}`} data-role="phase">
          {s.phase}
        </span>
        {alerts.length > 0 && (
          <a class="pill bad" href="#alerts" data-role="alerts">
            {alerts.length} alert{alerts.length === 1 ? "" : "s"}
          </a>
        )}
        {s.message && <div class="svc-message">{s.message}</div>}
        {s.image && (
          <div class="mono small muted image" title={s.image}>
            {s.image}
          </div>
        )}
      </div>
      <div class="svc-sync">
        {s.dev_mode ? (
          <>
            <div class="sync-line">
              {s.sync_paused ? (
                <span class="pill warn" data-role="sync">sync paused</span>
              ) : (
                <span class="muted" data-role="sync">
                  <strong class="fg">{s.syncs}</strong> sync{s.syncs === 1 ? "" : "s"}
                  {s.syncs > 0 && (
                    <>
                      {" · last "}
                      <strong class="fg" data-role="last-sync-ms">{ms(s.last_sync_ms)}</strong> save→synced
                    </>
                  )}
                  {lastSynced !== null && ` · ${ago(lastSynced, now)}`}
                </span>
              )}
            </div>
            <div class="replicas">
              {replicas.length === 0 && <span class="muted small">no dev-mode pod yet</span>}
              {replicas.map((r) => (
                <span key={r.pod} class={`replica ${replicaTone(r.state)}`} title={`${r.pod}: ${r.state}${r.message ? ` (${r.message})` : ""}`} data-pod={r.pod}>
                  <span class="dot" />
                  <span class="mono">{shortPod(r.pod, s.name)}</span> {r.state}
                  {r.last_restart_ms !== null && <span class="muted"> · restart {ms(r.last_restart_ms)}</span>}
                </span>
              ))}
            </div>
          </>
        ) : (
          <div class="muted small">
            {s.pod ? (
              <>
                pod <span class="mono">{s.pod}</span> · not in dev mode (no sync)
              </>
            ) : (
              "not in dev mode (no sync)"
            )}
          </div>
        )}
        {save && (
          <div class="last-save small" data-role="last-save">
            <span class="muted">last save {ago(save.at, now)}:</span>{" "}
            {save.kinds.length === 0 ? <span class="muted">…</span> : save.kinds.map((e) => <span key={e.seq} class={`kind ${kindTone(e.kind, e.exit_code)}`}>{e.kind}</span>)}
          </div>
        )}
      </div>
      <div class="svc-links">
        {s.forwards.map((f) => {
          const link = forwardLink(f);
          return link ? (
            <a key={f} class="forward" href={link.href} target="_blank" rel="noreferrer noopener" title={f}>
              {link.local} <span class="muted">→ {link.remote}</span>
            </a>
          ) : (
            <span key={f} class="mono small">
              {f}
            </span>
          );
        })}
        {s.intercepts.map((i) => (
          <span key={i} class="pill info" title="intercepted: matching requests reach a local process">
            intercept {i}
          </span>
        ))}
        {s.debug && <span class="pill info" data-role="debug">debug {s.debug}</span>}
      </div>
      <div class="svc-actions">
        {buttons.map((b) => (
          <button key={b.action} class="btn" title={b.title} data-action={b.action} disabled={busy[`${s.name}/${b.action}`]} onClick={() => void act(s.name, b.action)}>
            {b.label}
          </button>
        ))}
      </div>
    </div>
  );
}

interface LogsProps {
  model: Model;
  version: number; // the model's logsVersion: redrawn when lines came, not on every status change
  names: string; // the services, one per line (a string, so an unchanged list compares equal)
  focus: string | null;
  setFocus: (s: string | null) => void;
}

const Logs = memo(function Logs({ model, version, names, focus, setFocus }: LogsProps) {
  const [query, setQuery] = useState("");
  const [follow, setFollow] = useState(true);
  const box = useRef<HTMLDivElement>(null);
  const needle = query.trim().toLowerCase();
  const matching = useMemo(
    () => model.logs.filter((l) => (focus === null || l.service === focus) && (needle === "" || l.text.toLowerCase().includes(needle))),
    [version, focus, needle, model],
  );
  const shown = matching.slice(-SHOWN_LOGS);
  useLayoutEffect(() => {
    if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
  });
  const onScroll = () => {
    const el = box.current;
    if (!el) return;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
    if (atBottom !== follow) setFollow(atBottom);
  };
  return (
    <section class="panel logs">
      <div class="panel-head">
        <h2>Logs</h2>
        <select value={focus ?? ""} onChange={(e) => setFocus((e.currentTarget as HTMLSelectElement).value || null)} aria-label="service">
          <option value="">all services</option>
          {names.split("\n").filter(Boolean).map((name) => (
            <option key={name} value={name}>
              {name}
            </option>
          ))}
        </select>
        <input class="search" type="search" placeholder="Search logs" value={query} onInput={(e) => setQuery((e.currentTarget as HTMLInputElement).value)} aria-label="search logs" />
        <span class="muted small count">
          {matching.length === model.logs.length ? `${matching.length} lines` : `${matching.length} of ${model.logs.length} lines`}
        </span>
        <button class={`btn small ${follow ? "on" : ""}`} onClick={() => setFollow(!follow)} title="Keep the newest line in view">
          {follow ? "following" : "follow"}
        </button>
      </div>
      <div class="log-box" ref={box} onScroll={onScroll}>
        {shown.length === 0 && <div class="empty">{model.logs.length ? "No line matches." : "No log lines yet."}</div>}
        {shown.map((l) => (
          <LogRow key={l.id} line={l} multi={focus === null} />
        ))}
      </div>
    </section>
  );
});

const LogRow = memo(function LogRow({ line, multi }: { line: LogLine; multi: boolean }) {
  return (
    <div class="log-line" data-service={line.service}>
      <span class="log-time">{clock(line.at)}</span>
      {multi && (
        <span class="log-svc" style={{ "--hue": serviceHue(line.service) }}>
          {line.service}
        </span>
      )}
      <span class="log-pod" title={line.pod}>
        {shortPod(line.pod, line.service)}
      </span>
      <span class="log-text" dangerouslySetInnerHTML={{ __html: line.html }} />
    </div>
  );
});

const Timeline = memo(function Timeline({
  events,
  focus,
  version,
}: {
  events: TimelineEvent[];
  focus: string | null;
  version: number;
}) {
  const shown = useMemo(
    () => events.filter((e) => focus === null || e.service === focus).slice(-SHOWN_EVENTS).reverse(),
    [version, focus, events],
  );
  return (
    <section class="panel timeline">
      <div class="panel-head">
        <h2>Timeline</h2>
        <span class="muted small">{focus ? `${focus} only` : "newest first"}</span>
      </div>
      <ol class="events">
        {shown.length === 0 && <li class="empty">Nothing happened yet: save a file.</li>}
        {shown.map((e) => (
          <li key={e.seq} class="event" data-kind={e.kind} data-service={e.service}>
            <span class="log-time">{clock(e.at)}</span>
            <span class={`kind ${kindTone(e.kind, e.exit_code)}`}>{e.kind}</span>
            <span class="svc small" style={{ "--hue": serviceHue(e.service) }}>
              {e.service}
            </span>
            <span class="event-msg">
              {e.message}
              {e.exit_code !== null && <span class="muted"> (exit {e.exit_code})</span>}
              {e.pod && <span class="muted mono small"> {shortPod(e.pod, e.service)}</span>}
            </span>
          </li>
        ))}
      </ol>
    </section>
  );
});
